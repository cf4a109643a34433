// A label as the learner gets it: one class index a pixel at the scan's own resolution. Painting writes discs into
// that array with no anti-aliasing, so what is painted is byte for byte what is sent; it travels as a PNG encoded
// here, not by a canvas, whose colour management could change the values. Every change is one undoable patch.
"use strict";

const ReviewLabel = (() => {
  const UNDO_BYTES = 96 * 1024 * 1024;  // before and after of every patch kept, oldest dropped first
  const UNDO_STEPS = 200;

  // ---- PNG: class indices in and out, 8-bit grey ----
  const SIGNATURE = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
  const CRC_TABLE = new Uint32Array(256).map((_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  function crc32(bytes) {
    let c = 0xffffffff;
    for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 255] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }
  async function through(parts, stream) {  // zlib in or out: the streams' "deflate" is the zlib format PNG wants
    return new Uint8Array(await new Response(new Blob(parts).stream().pipeThrough(stream)).arrayBuffer());
  }
  function chunk(kind, data) {
    const out = new Uint8Array(12 + data.length), dv = new DataView(out.buffer);
    dv.setUint32(0, data.length);
    for (let i = 0; i < 4; i++) out[4 + i] = kind.charCodeAt(i);
    out.set(data, 8);
    dv.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)));
    return out;
  }
  async function encodePng(classes, width, height) {
    const raw = new Uint8Array((width + 1) * height);  // each row: filter type 0, then its bytes
    for (let y = 0; y < height; y++) raw.set(classes.subarray(y * width, (y + 1) * width), y * (width + 1) + 1);
    const header = new Uint8Array(13), dv = new DataView(header.buffer);
    dv.setUint32(0, width);
    dv.setUint32(4, height);
    header[8] = 8;  // bit depth; colour type 0 (grey), deflate, no interlace are the zeros after it
    const idat = await through([raw], new CompressionStream("deflate"));
    return new Blob([SIGNATURE, chunk("IHDR", header), chunk("IDAT", idat), chunk("IEND", new Uint8Array(0))],
                    { type: "image/png" });
  }
  async function decodePng(buffer) {  // 8-bit grey or palette, not interlaced: the indices exactly as stored
    const b = new Uint8Array(buffer), dv = new DataView(buffer);
    if (SIGNATURE.some((v, i) => b[i] !== v)) throw new Error("the pre-label is not a PNG");
    let width = 0, height = 0, depth = 0, type = 0, interlace = 0;
    const idat = [];
    for (let at = 8; at + 8 <= b.length; ) {
      const length = dv.getUint32(at), kind = String.fromCharCode(...b.subarray(at + 4, at + 8));
      if (kind === "IHDR") {
        width = dv.getUint32(at + 8);
        height = dv.getUint32(at + 12);
        [depth, type, interlace] = [b[at + 16], b[at + 17], b[at + 20]];
      } else if (kind === "IDAT") idat.push(b.subarray(at + 8, at + 8 + length));
      else if (kind === "IEND") break;
      at += 12 + length;
    }
    if (depth !== 8 || (type !== 0 && type !== 3) || interlace) {
      throw new Error(`the pre-label PNG has ${depth}-bit colour type ${type}; class indices are 8-bit grey`);
    }
    const raw = await through(idat, new DecompressionStream("deflate")), out = new Uint8Array(width * height);
    for (let y = 0; y < height; y++) {
      const filter = raw[y * (width + 1)], src = y * (width + 1) + 1, row = y * width;
      for (let x = 0; x < width; x++) {
        const a = x ? out[row + x - 1] : 0, up = y ? out[row - width + x] : 0;
        const c = x && y ? out[row - width + x - 1] : 0;
        let p = raw[src + x];
        if (filter === 1) p += a;
        else if (filter === 2) p += up;
        else if (filter === 3) p += (a + up) >> 1;
        else if (filter === 4) {
          const pa = Math.abs(up - c), pb = Math.abs(a - c), pc = Math.abs(a + up - 2 * c);
          p += pa <= pb && pa <= pc ? a : pb <= pc ? up : c;
        }
        out[row + x] = p & 255;
      }
    }
    return { width, height, data: out };
  }

  const grow = (box, x0, y0, x1, y1) => box ? [Math.min(box[0], x0), Math.min(box[1], y0), Math.max(box[2], x1),
                                               Math.max(box[3], y1)] : [x0, y0, x1, y1];

  function line(x0, y0, x1, y1, visit) {  // Bresenham: every pixel from one sample to the next, both included
    const dx = Math.abs(x1 - x0), dy = -Math.abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
    let err = dx + dy;
    for (;;) {
      visit(x0, y0);
      if (x0 === x1 && y0 === y1) return;
      const e2 = 2 * err;
      if (e2 >= dy) { err += dy; x0 += sx; }
      if (e2 <= dx) { err += dx; y0 += sy; }
    }
  }

  // The class map being edited. ``touched(box)`` hears of every changed box (to recolour it), ``committed()`` of
  // every undo step; boxes are [x0, y0, x1, y1), end exclusive.
  class LabelMap {
    constructor(prelabel, width, height, { touched, committed }) {
      Object.assign(this, { width, height, touched, committed });
      this.labels = prelabel.slice();
      this.base = prelabel.slice();  // the labels as of the last commit
      this.prelabel = prelabel.slice();
      this.changed = 0;  // pixels that differ from the pre-label
      this.dirty = null;
      this.undos = [];
      this.redos = [];
      this.bytes = 0;
    }

    mark(x0, y0, x1, y1) {
      this.dirty = grow(this.dirty, x0, y0, x1, y1);
      this.touched([x0, y0, x1, y1]);
    }

    // A disc at a scan pixel: every (dx, dy) with dx² + dy² <= r² gets paint.value (or, erasing one class
    // only, paint.only turns to 0); nothing blended.
    stamp(cx, cy, r, paint) {
      const { width, height, labels } = this, rr = r * r;
      const y0 = Math.max(0, cy - r), y1 = Math.min(height - 1, cy + r);
      if (y0 > y1 || cx + r < 0 || cx - r >= width) return;
      for (let y = y0; y <= y1; y++) {
        const left = rr - (y - cy) * (y - cy);
        let half = Math.floor(Math.sqrt(left));
        while (half * half > left) half--;
        const x0 = Math.max(0, cx - half), x1 = Math.min(width - 1, cx + half), row = y * width;
        if (x0 > x1) continue;
        if (paint.only < 0) labels.fill(paint.value, row + x0, row + x1 + 1);
        else for (let i = row + x0; i <= row + x1; i++) if (labels[i] === paint.only) labels[i] = 0;
      }
      this.mark(Math.max(0, cx - r), y0, Math.min(width, cx + r + 1), y1 + 1);
    }

    // From one pointer sample to the next: a disc at every pixel of the line between them (the first was stamped).
    strokeTo([x0, y0], [x1, y1], r, paint) {
      line(x0, y0, x1, y1, (x, y) => { if (x !== x0 || y !== y0) this.stamp(x, y, r, paint); });
    }

    // The connected area (4-neighbours) of the clicked pixel's class becomes ``to``, within ``bounds``.
    fill(sx, sy, to, [bx0, by0, bx1, by1]) {
      const { width, labels } = this;
      if (sx < bx0 || sy < by0 || sx >= bx1 || sy >= by1) return;
      const from = labels[sy * width + sx];
      if (from === to) return;
      const seeds = [sx, sy];
      while (seeds.length) {
        const y = seeds.pop(), x = seeds.pop(), row = y * width;
        if (labels[row + x] !== from) continue;
        let l = x, r = x;
        while (l > bx0 && labels[row + l - 1] === from) l--;
        while (r < bx1 - 1 && labels[row + r + 1] === from) r++;
        labels.fill(to, row + l, row + r + 1);
        this.mark(l, y, r + 1, y + 1);
        for (const ny of [y - 1, y + 1]) {
          if (ny < by0 || ny >= by1) continue;
          for (let i = l, n = ny * width; i <= r; i++) {
            if (labels[n + i] === from && (i === l || labels[n + i - 1] !== from)) seeds.push(i, ny);
          }
        }
      }
      this.commit();
    }

    commit() {  // what changed since the last commit becomes one undo step
      const box = this.dirty;
      this.dirty = null;
      if (!box) return;
      const before = this.copyOut(this.base, box), after = this.copyOut(this.labels, box);
      if (before.every((v, i) => v === after[i])) return;
      this.copyIn(this.base, box, after);
      this.undos.push({ box, before, after });
      this.bytes += 2 * before.length;
      for (const p of this.redos) this.bytes -= 2 * p.before.length;
      this.redos = [];
      while (this.undos.length > 1 && (this.bytes > UNDO_BYTES || this.undos.length > UNDO_STEPS)) {
        this.bytes -= 2 * this.undos.shift().before.length;
      }
      this.changed += this.differing(after, box) - this.differing(before, box);
      this.committed();
    }

    cancel() {  // a stroke that turned into a pinch is taken back
      if (!this.dirty) return;
      this.copyIn(this.labels, this.dirty, this.copyOut(this.base, this.dirty));
      this.touched(this.dirty);
      this.dirty = null;
    }

    undo() { this.step(this.undos, this.redos, "before", "after"); }
    redo() { this.step(this.redos, this.undos, "after", "before"); }

    step(from, to, side, other) {
      if (this.dirty || !from.length) return;
      const patch = from.pop();
      this.copyIn(this.labels, patch.box, patch[side]);
      this.copyIn(this.base, patch.box, patch[side]);
      to.push(patch);
      this.changed += this.differing(patch[side], patch.box) - this.differing(patch[other], patch.box);
      this.touched(patch.box);
      this.committed();
    }

    copyOut(src, [x0, y0, x1, y1]) {
      const w = x1 - x0, out = new Uint8Array(w * (y1 - y0));
      for (let y = y0; y < y1; y++) out.set(src.subarray(y * this.width + x0, y * this.width + x1), (y - y0) * w);
      return out;
    }

    copyIn(dst, [x0, y0, x1, y1], data) {
      const w = x1 - x0;
      for (let y = y0; y < y1; y++) dst.set(data.subarray((y - y0) * w, (y - y0 + 1) * w), y * this.width + x0);
    }

    differing(data, box) {  // how many pixels of a patch differ from the pre-label
      const pre = this.copyOut(this.prelabel, box);
      let n = 0;
      for (let i = 0; i < data.length; i++) if (data[i] !== pre[i]) n++;
      return n;
    }
  }

  return { encodePng, decodePng, LabelMap, grow };
})();
