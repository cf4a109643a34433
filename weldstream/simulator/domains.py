"""The named scan domains: one inspection rig on one pipe material each, described in physical units.

A continual learner sees these as the drift between domains, so every difference here is one a real
fleet of rigs has: probe frequency, gain and TGC settings, material, detector polarity, pixel pitch,
digitiser bit depth and the flaws a welding process tends to make.
"""

from __future__ import annotations

from dataclasses import dataclass

MODALITIES = ("ultrasonic", "radiograph")
DTYPES = ("uint8", "uint16", "float32")


@dataclass(frozen=True)
class UltrasonicRig:
    """A phased-array B-scan of a PE butt-fusion weld: rows are depth (sound path), columns scan position."""

    frequency_mhz: float  # probe centre frequency: wavelength, hence speckle grain, and attenuation follow it
    sound_speed_mm_per_us: float  # longitudinal velocity: PE80 (MDPE) is slower than PE100 (HDPE)
    attenuation_db_per_mm_mhz: float  # one-way material loss per MHz; PE is lossy and loss grows with f
    wall_mm: float  # pipe wall thickness: the depth of the back-wall echo
    pulse_cycles: float  # pulse length; axial resolution is about cycles * wavelength / 2
    f_number: float  # focusing; the lateral beam width is about wavelength * f_number
    gain_db: float  # gain above the calibration that puts the back wall at 80 % full screen height
    tgc_db_per_mm: float  # time-gain compensation slope (dB per mm of depth); 2x attenuation is flat
    tgc_max_db: float  # the TGC amplifier's ceiling
    dead_zone_mm: float  # near-surface depth blinded by the initial pulse and the wedge echo
    noise_level: float  # receiver noise relative to PE speckle at the back wall; TGC amplifies it
    fusion_line_contrast: float  # extra backscatter of the re-crystallised melt zone at the fusion plane
    bead_height_mm: float  # inner bead rolled into the bore: a double lobe under the back wall
    log_dynamic_range_db: float | None  # None: linear amplitude (% screen height); else log over this range
    full_scale: float  # digitiser full scale: 4095 for 12 bit, 255 for 8 bit, 65535 for 16 bit

    @property
    def wavelength_mm(self) -> float:
        return self.sound_speed_mm_per_us / self.frequency_mhz


@dataclass(frozen=True)
class RadiographRig:
    """A single-wall exposure of a steel girth weld: rows run across the weld, columns along it."""

    steel_grade: str  # API 5L grade; grade sets the wall and the welding process, not the attenuation
    wall_mm: float  # penetrated parent wall thickness
    cap_width_mm: float  # weld cap width: wide for manual SMAW, narrow for mechanised GMAW
    cap_height_mm: float  # cap reinforcement above the parent surface
    root_width_mm: float  # penetration bead under the root
    root_height_mm: float
    ripple_period_mm: float  # spacing of the solidification ripples on the cap
    mu_per_mm: float  # effective attenuation of steel for the tube voltage or isotope: contrast per mm
    scatter_fraction: float  # scatter-to-primary ratio: thick walls and gamma sources scatter more
    unsharpness_mm: float  # total geometric plus film/detector unsharpness
    gradient: float  # relative dose change across the image (source distance, heel effect)
    detector: str  # "film" (digitised brightness), "film-density" (optical density), "dda" (dose counts)
    film_gamma: float  # film contrast: slope of the characteristic curve (unused for a DDA)
    parent_level: float  # optical density in the parent metal (film) or fraction of full scale (DDA)
    noise_level: float  # film graininess in OD, or DDA quantum noise relative to full scale
    iqi_wires_mm: tuple[float, ...]  # wire IQI diameters, thickest first (EN ISO 19232-1 set)
    tungsten_fraction: float  # share of inclusions that are tungsten (denser than steel) rather than slag
    full_scale: float  # digitiser full scale; for an optical-density export, the highest density

    def __post_init__(self) -> None:
        if self.detector not in ("film", "film-density", "dda"):
            raise ValueError(f"unknown detector {self.detector!r}")


@dataclass(frozen=True)
class Domain:
    """One rig on one material: how its scans look and which flaws its welding process makes."""

    name: str
    modality: str  # "ultrasonic" | "radiograph"
    dtype: str  # the rig's export dtype: "uint8" | "uint16" | "float32"
    fov_height_mm: float  # field of view over the scan's rows; pixel pitch = fov_height_mm / rows
    rig: UltrasonicRig | RadiographRig
    defect_mix: tuple[float, float, float, float]  # relative odds: crack, porosity, lack of fusion, inclusion
    defect_free_fraction: float  # share of scans with no flaw at all
    mean_extra_defects: float  # Poisson mean of flaws beyond the first, per square field of view
    max_defects: int  # per square field of view
    flaw_scale: float  # flaw sizes relative to the reference table in defects.py (thin walls: smaller)
    description: str

    def __post_init__(self) -> None:
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        expected = UltrasonicRig if self.modality == "ultrasonic" else RadiographRig
        if not isinstance(self.rig, expected):
            raise ValueError(f"a {self.modality} domain needs a {expected.__name__}")
        if len(self.defect_mix) != 4 or min(self.defect_mix) <= 0:
            raise ValueError("defect_mix needs 4 positive odds: crack, porosity, lack of fusion, inclusion")

    def pitch_mm(self, rows: int) -> float:
        """Square pixel pitch: the rig covers the same height at any row count, so a bigger scan is finer."""
        return self.fov_height_mm / rows


_WIRES_W10_W16 = (0.40, 0.32, 0.25, 0.20, 0.16, 0.125, 0.10)
_WIRES_W6_W12 = (1.00, 0.80, 0.63, 0.50, 0.40, 0.32, 0.25)

_ALL = (
    Domain(
        name="ut-pe100-5mhz",
        modality="ultrasonic",
        dtype="uint16",
        fov_height_mm=34.0,
        rig=UltrasonicRig(
            frequency_mhz=5.0, sound_speed_mm_per_us=2.45, attenuation_db_per_mm_mhz=0.12, wall_mm=28.6,
            pulse_cycles=2.5, f_number=2.5, gain_db=0.0, tgc_db_per_mm=0.8, tgc_max_db=30.0,
            dead_zone_mm=2.4, noise_level=0.08, fusion_line_contrast=0.9, bead_height_mm=3.5,
            log_dynamic_range_db=None, full_scale=4095.0,
        ),
        defect_mix=(1.0, 1.0, 1.0, 1.0),
        defect_free_fraction=0.12,
        mean_extra_defects=1.3,
        max_defects=5,
        flaw_scale=1.0,
        description=(
            "Rig A: 5 MHz phased array on a PE100 SDR11 315 mm pipe (28.6 mm wall). 12-bit linear amplitude "
            "in uint16. Partial TGC (0.8 dB/mm against 1.2 dB/mm two-way loss), so echoes fade with depth."
        ),
    ),
    Domain(
        name="ut-pe80-2mhz-highgain",
        modality="ultrasonic",
        dtype="uint8",
        fov_height_mm=22.0,
        rig=UltrasonicRig(
            frequency_mhz=2.0, sound_speed_mm_per_us=2.30, attenuation_db_per_mm_mhz=0.12, wall_mm=18.2,
            pulse_cycles=2.5, f_number=2.0, gain_db=10.0, tgc_db_per_mm=0.0, tgc_max_db=0.0,
            dead_zone_mm=3.2, noise_level=0.15, fusion_line_contrast=0.6, bead_height_mm=2.5,
            log_dynamic_range_db=None, full_scale=255.0,
        ),
        defect_mix=(0.6, 1.4, 0.7, 1.3),
        defect_free_fraction=0.12,
        mean_extra_defects=1.5,
        max_defects=6,
        flaw_scale=0.9,
        description=(
            "Legacy 2 MHz flaw detector on a PE80 SDR11 200 mm pipe (18.2 mm wall), 8-bit export. Coarse "
            "speckle (long wavelength), no TGC and +10 dB gain: bright grain, clipped back wall and echoes. "
            "Field joints: more porosity and contamination."
        ),
    ),
    Domain(
        name="ut-pe100-7mhz-tgc",
        modality="ultrasonic",
        dtype="uint16",
        fov_height_mm=12.5,
        rig=UltrasonicRig(
            frequency_mhz=7.0, sound_speed_mm_per_us=2.45, attenuation_db_per_mm_mhz=0.12, wall_mm=10.0,
            pulse_cycles=2.0, f_number=2.0, gain_db=-2.0, tgc_db_per_mm=2.0, tgc_max_db=24.0,
            dead_zone_mm=1.1, noise_level=0.12, fusion_line_contrast=1.1, bead_height_mm=1.8,
            log_dynamic_range_db=54.0, full_scale=65535.0,
        ),
        defect_mix=(0.8, 0.7, 1.8, 0.7),
        defect_free_fraction=0.18,
        mean_extra_defects=1.1,
        max_defects=5,
        flaw_scale=0.45,
        description=(
            "7 MHz array on thin-wall PE100 (110 mm SDR11, 10 mm wall) with fine pitch. Full TGC "
            "that slightly over-compensates and lifts receiver noise at depth; log-compressed (54 dB) "
            "16-bit output. Cold fusion (lack of fusion) dominates."
        ),
    ),
    Domain(
        name="xray-film-steel-x52",
        modality="radiograph",
        dtype="uint8",
        fov_height_mm=32.0,
        rig=RadiographRig(
            steel_grade="X52", wall_mm=12.7, cap_width_mm=15.0, cap_height_mm=1.8, root_width_mm=4.5,
            root_height_mm=1.2, ripple_period_mm=2.8, mu_per_mm=0.22, scatter_fraction=0.35,
            unsharpness_mm=0.15, gradient=0.25, detector="film", film_gamma=4.0, parent_level=3.0,
            noise_level=0.025, iqi_wires_mm=_WIRES_W10_W16, tungsten_fraction=0.35, full_scale=255.0,
        ),
        defect_mix=(0.7, 1.4, 0.8, 1.3),
        defect_free_fraction=0.15,
        mean_extra_defects=1.3,
        max_defects=5,
        flaw_scale=1.0,
        description=(
            "200 kV X-ray on class C5 film, digitised to 8 bit: positive display, voids dark, weld bright. "
            "X52 12.7 mm wall, manual SMAW with a GTAW root, so slag, porosity and some tungsten (bright)."
        ),
    ),
    Domain(
        name="xray-dda-steel-x70-inverted",
        modality="radiograph",
        dtype="uint16",
        fov_height_mm=20.0,
        rig=RadiographRig(
            steel_grade="X70", wall_mm=15.9, cap_width_mm=9.0, cap_height_mm=1.5, root_width_mm=3.5,
            root_height_mm=1.0, ripple_period_mm=1.6, mu_per_mm=0.18, scatter_fraction=0.2,
            unsharpness_mm=0.1, gradient=0.12, detector="dda", film_gamma=0.0, parent_level=0.55,
            noise_level=0.006, iqi_wires_mm=_WIRES_W10_W16, tungsten_fraction=0.0, full_scale=65535.0,
        ),
        defect_mix=(0.9, 0.8, 1.8, 0.5),
        defect_free_fraction=0.16,
        mean_extra_defects=1.0,
        max_defects=4,
        flaw_scale=0.8,
        description=(
            "Digital detector array, 16-bit dose counts: inverted against film, so voids are bright and the "
            "cap dark. X70 15.9 mm wall, narrow mechanised GMAW cap, fine pitch; side-wall lack of fusion "
            "dominates and there is no tungsten. Quantum noise and residual column gain pattern."
        ),
    ),
    Domain(
        name="xray-film-thickwall-float",
        modality="radiograph",
        dtype="float32",
        fov_height_mm=44.0,
        rig=RadiographRig(
            steel_grade="X65", wall_mm=25.4, cap_width_mm=22.0, cap_height_mm=2.5, root_width_mm=6.0,
            root_height_mm=1.5, ripple_period_mm=3.5, mu_per_mm=0.12, scatter_fraction=0.5,
            unsharpness_mm=0.35, gradient=0.35, detector="film-density", film_gamma=3.2, parent_level=2.6,
            noise_level=0.02, iqi_wires_mm=_WIRES_W6_W12, tungsten_fraction=0.1, full_scale=4.5,
        ),
        defect_mix=(1.3, 0.8, 0.9, 1.4),
        defect_free_fraction=0.1,
        mean_extra_defects=1.6,
        max_defects=6,
        flaw_scale=1.2,
        description=(
            "Ir-192 gamma on coarse-grain film through a 25.4 mm X65 wall, exported as float32 "
            "optical density (higher = darker film, so voids read high). Low contrast and heavy "
            "scatter; SAW fill, so slag lines and cracks are common; coarse pitch."
        ),
    ),
)

DOMAINS: dict[str, Domain] = {domain.name: domain for domain in _ALL}


def domain_names() -> list[str]:
    """The domain names in canonical order (ultrasonic first), the order a learner meets them in."""
    return list(DOMAINS)


def get_domain(domain: str | Domain) -> Domain:
    """A Domain, or its name -> the Domain; a miss lists the valid names."""
    if isinstance(domain, Domain):
        return domain
    try:
        return DOMAINS[domain]
    except (KeyError, TypeError):
        raise ValueError(f"unknown domain {domain!r}; valid domains: {', '.join(DOMAINS)}") from None
