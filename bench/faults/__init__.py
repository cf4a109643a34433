"""`weldstream bench faults`: real processes on loopback, one fault at a time, each outcome checked.

Every fault writes one row (what was done, what was expected, what was measured, pass) and its raw
figures; `report.py` turns the rows into faults.md and faults.json.
"""
