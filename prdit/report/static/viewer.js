// prdit report: a three-plane CT slice viewer with no dependencies.
// Volumes arrive as base64 little-endian int16 HU arrays [z, y, x] (LPS) in the JSON element #prdit-volumes.
// Display follows the radiological convention of prdit.preview: axial with anterior at the top and the
// patient's right on the left; coronal and sagittal with superior at the top; pixels keep their physical aspect.
// A volume with a label map (payload.masks, uint8 values and face bits computed by prdit.report.labels) gets its
// label boundaries drawn on a second canvas over each slice: a line along every voxel face the Python side marked.
"use strict";

(function () {
  const payload = JSON.parse(document.getElementById("prdit-volumes").textContent);
  const PLANES = ["axial", "coronal", "sagittal"];
  const AXIS = { axial: "z", coronal: "y", sagittal: "x" };
  const PANEL_PX = [200, 340]; // CSS pixels of a volume's longest physical side: at least, at most
  const GAP_PX = 16;
  const state = { window: payload.default_window, linked: true, crosshair: true, contours: true, active: null };
  // Which voxel faces lie on the top, bottom, left and right side of a displayed pixel, per plane (rows of the
  // coronal and sagittal planes run from superior to inferior, so their top neighbour is z + 1).
  const SIDES = {
    axial: { top: "y-", bottom: "y+", left: "x-", right: "x+" },
    coronal: { top: "z+", bottom: "z-", left: "x-", right: "x+" },
    sagittal: { top: "z+", bottom: "z-", left: "y-", right: "y+" },
  };
  const viewers = [];

  function decode(volume) {
    if (!volume.values) {
      const bytes = Uint8Array.from(atob(volume.data), (c) => c.charCodeAt(0));
      volume.values = new Int16Array(bytes.buffer);
    }
    return volume.values;
  }

  // Geometry of one plane of a volume: rows/cols of the displayed image, their spacing, and voxel lookup.
  function planeGeometry(volume, plane) {
    const [d, h, w] = volume.shape;
    const [sz, sy, sx] = volume.spacing;
    if (plane === "axial") return { rows: h, cols: w, rowMm: sy, colMm: sx, depth: d,
      voxel: (p, r, c) => [p.z, r, c] };
    if (plane === "coronal") return { rows: d, cols: w, rowMm: sz, colMm: sx, depth: h,
      voxel: (p, r, c) => [d - 1 - r, p.y, c] };
    return { rows: d, cols: h, rowMm: sz, colMm: sy, depth: w, voxel: (p, r, c) => [d - 1 - r, c, p.x] };
  }

  // Where the other two planes cross this one, in display (row, col) coordinates.
  function crossing(volume, plane, p) {
    const d = volume.shape[0];
    if (plane === "axial") return { row: p.y, col: p.x };
    if (plane === "coronal") return { row: d - 1 - p.z, col: p.x };
    return { row: d - 1 - p.z, col: p.y };
  }

  function bytes(text) {
    return Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
  }

  function maskOf(volume) {
    if (volume.mask === null || volume.mask === undefined) return null;
    const mask = payload.masks[volume.mask];
    if (!mask.values) {
      mask.values = bytes(mask.labels);
      mask.faces = bytes(mask.edges);
      mask.nameOf = {};
      mask.colourOf = {};
      for (const [name, value] of Object.entries(mask.names)) {
        mask.nameOf[value] = name;
        mask.colourOf[value] = mask.colours[name];
      }
    }
    return mask;
  }

  function hu(volume, z, y, x) {
    const [, h, w] = volume.shape;
    return decode(volume)[(z * h + y) * w + x];
  }

  class Viewer {
    constructor(root, set) {
      this.root = root;
      this.set = set;
      this.volumes = payload.volumes.filter((v) => v.set === set.key);
      this.select = root.querySelector("select");
      this.readout = root.querySelector(".readout");
      this.info = root.querySelector(".volume-info");
      this.legend = root.querySelector(".legend");
      this.panes = {};
      for (const plane of PLANES) {
        const pane = root.querySelector(`.pane[data-plane="${plane}"]`);
        this.panes[plane] = { pane, canvas: pane.querySelector("canvas"), slider: pane.querySelector("input"),
          label: pane.querySelector(".position"), contours: pane.querySelector("canvas.contours") };
        this.bindPane(plane);
      }
      this.volumes.forEach((v, i) => this.select.add(new Option(v.name, String(i))));
      this.select.addEventListener("change", () => this.show(Number(this.select.value)));
      this.show(0);
    }

    show(index) {
      this.volume = this.volumes[index];
      this.select.value = String(index);
      const [d, h, w] = this.volume.shape;
      this.pos = { z: Math.floor(d / 2), y: Math.floor(h / 2), x: Math.floor(w / 2) };
      const [sz, sy, sx] = this.volume.spacing;
      // the three planes fill the row: their widths in mm are x, x and y
      const room = this.root.querySelector(".planes").clientWidth - 2 * GAP_PX - 4;
      const longest = Math.max(d * sz, h * sy, w * sx);
      const px = Math.min(PANEL_PX[1], Math.max(PANEL_PX[0], (room * longest) / (2 * w * sx + h * sy)));
      const scale = px / longest;
      for (const plane of PLANES) {
        const g = planeGeometry(this.volume, plane);
        const { canvas, slider } = this.panes[plane];
        const ratio = window.devicePixelRatio || 1;
        canvas.style.width = `${Math.round(g.cols * g.colMm * scale)}px`;
        canvas.style.height = `${Math.round(g.rows * g.rowMm * scale)}px`;
        canvas.width = Math.round(g.cols * g.colMm * scale * ratio);
        canvas.height = Math.round(g.rows * g.rowMm * scale * ratio);
        const layer = this.panes[plane].contours;
        if (layer) {
          Object.assign(layer, { width: canvas.width, height: canvas.height });
          Object.assign(layer.style, { width: canvas.style.width, height: canvas.style.height });
        }
        slider.min = 0;
        slider.max = g.depth - 1;
        this.panes[plane].offscreen = Object.assign(document.createElement("canvas"), { width: g.cols, height: g.rows });
      }
      this.info.textContent = this.volume.info || "";
      this.mask = maskOf(this.volume);
      this.showLegend();
      this.render();
    }

    showLegend() {
      if (!this.legend) return;
      this.legend.replaceChildren();
      this.legend.hidden = !this.mask || !state.contours;
      if (!this.mask) return;
      for (const [name, colour] of Object.entries(this.mask.colours)) {
        const item = document.createElement("span");
        item.className = "legend-item";
        item.dataset.label = name;
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = colour;
        item.append(swatch, ` ${name} (${this.mask.names[name]})`);
        this.legend.append(item);
      }
      const source = document.createElement("span");
      source.className = "legend-source";
      source.textContent = this.mask.source.split(/[\\/]/).pop();
      source.title = this.mask.source;
      this.legend.append(source);
    }

    bindPane(plane) {
      const { canvas, slider, pane } = this.panes[plane];
      slider.addEventListener("input", () => this.moveTo(plane, Number(slider.value)));
      slider.addEventListener("focus", () => { state.active = { viewer: this, plane }; });
      pane.addEventListener("mouseenter", () => { state.active = { viewer: this, plane }; });
      canvas.addEventListener("mousemove", (event) => this.hover(plane, event));
      canvas.addEventListener("mouseleave", () => this.showReadout(null));
      canvas.addEventListener("click", (event) => this.pick(plane, event));
      canvas.addEventListener("wheel", (event) => {
        event.preventDefault();
        this.step(plane, event.deltaY < 0 ? 1 : -1);
      }, { passive: false });
    }

    voxelAt(plane, event) {
      const g = planeGeometry(this.volume, plane);
      const rect = this.panes[plane].canvas.getBoundingClientRect();
      const col = Math.min(g.cols - 1, Math.max(0, Math.floor(((event.clientX - rect.left) / rect.width) * g.cols)));
      const row = Math.min(g.rows - 1, Math.max(0, Math.floor(((event.clientY - rect.top) / rect.height) * g.rows)));
      return g.voxel(this.pos, row, col);
    }

    hover(plane, event) {
      this.showReadout(this.voxelAt(plane, event));
    }

    showReadout(voxel) {
      if (!voxel) {
        this.readout.textContent = "hover over a slice to read HU";
        return;
      }
      const [z, y, x] = voxel;
      const value = hu(this.volume, z, y, x);
      const [, h, w] = this.volume.shape;
      const label = this.mask ? this.mask.values[(z * h + y) * w + x] : 0;
      const tissue = label ? ` · ${this.mask.nameOf[label] || `label ${label}`}` : "";
      this.readout.innerHTML = `<b>${value} HU</b>${tissue} at voxel (z ${z}, y ${y}, x ${x})`;
    }

    // A click moves the other two planes through the clicked voxel.
    pick(plane, event) {
      const [z, y, x] = this.voxelAt(plane, event);
      const target = { z, y, x };
      delete target[AXIS[plane]];
      for (const [axis, value] of Object.entries(target)) this.setPosition(axis, value, true);
      this.render();
      if (state.linked) for (const other of viewers) if (other !== this) other.render();
    }

    step(plane, delta) {
      const slider = this.panes[plane].slider;
      this.moveTo(plane, Math.min(Number(slider.max), Math.max(0, Number(slider.value) + delta)));
    }

    moveTo(plane, index) {
      this.setPosition(AXIS[plane], index, true);
      this.render();
      if (state.linked) for (const other of viewers) if (other !== this) other.render();
    }

    // Linked viewers follow at the same relative depth (equal volume sizes: the same index).
    setPosition(axis, index, propagate) {
      const size = this.volume.shape["zyx".indexOf(axis)];
      this.pos[axis] = Math.min(size - 1, Math.max(0, index));
      if (propagate && state.linked) {
        for (const other of viewers) {
          if (other === this) continue;
          const otherSize = other.volume.shape["zyx".indexOf(axis)];
          other.setPosition(axis, Math.round((this.pos[axis] / Math.max(1, size - 1)) * (otherSize - 1)), false);
        }
      }
    }

    render() {
      const [level, width] = payload.windows[state.window];
      const low = level - width / 2;
      for (const plane of PLANES) {
        const g = planeGeometry(this.volume, plane);
        const { canvas, slider, label, offscreen } = this.panes[plane];
        const index = this.pos[AXIS[plane]];
        const image = offscreen.getContext("2d").createImageData(g.cols, g.rows);
        for (let r = 0; r < g.rows; r++) {
          for (let c = 0; c < g.cols; c++) {
            const [z, y, x] = g.voxel(this.pos, r, c);
            const grey = Math.max(0, Math.min(255, Math.round(((hu(this.volume, z, y, x) - low) / width) * 255)));
            const o = (r * g.cols + c) * 4;
            image.data[o] = image.data[o + 1] = image.data[o + 2] = grey;
            image.data[o + 3] = 255;
          }
        }
        offscreen.getContext("2d").putImageData(image, 0, 0);
        const context = canvas.getContext("2d");
        context.imageSmoothingEnabled = false;
        context.drawImage(offscreen, 0, 0, canvas.width, canvas.height);
        if (state.crosshair) this.drawCrosshair(context, plane, g, canvas);
        this.drawContours(plane, g);
        slider.value = String(index);
        const mm = (index * this.volume.spacing["zyx".indexOf(AXIS[plane])]).toFixed(1);
        label.textContent = `${AXIS[plane]} = ${index} (0–${g.depth - 1}) · ${mm} mm`;
      }
    }

    // A line inside each pixel along every side that faces another label, in the pixel's label colour.
    drawContours(plane, g) {
      const layer = this.panes[plane].contours;
      if (!layer) return;
      const context = layer.getContext("2d");
      context.clearRect(0, 0, layer.width, layer.height);
      layer.hidden = !this.mask || !state.contours;
      if (layer.hidden) return;
      const [, h, w] = this.volume.shape;
      const sx = layer.width / g.cols;
      const sy = layer.height / g.rows;
      const line = Math.max(1, Math.min(sx, sy) / 6);
      const bits = Object.fromEntries(Object.entries(SIDES[plane]).map(([side, face]) => [side, payload.face_bits[face]]));
      const any = bits.top | bits.bottom | bits.left | bits.right;
      for (let r = 0; r < g.rows; r++) {
        for (let c = 0; c < g.cols; c++) {
          const [z, y, x] = g.voxel(this.pos, r, c);
          const index = (z * h + y) * w + x;
          const faces = this.mask.faces[index] & any;
          if (!faces) continue;
          context.fillStyle = this.mask.colourOf[this.mask.values[index]];
          const left = c * sx;
          const top = r * sy;
          if (faces & bits.top) context.fillRect(left, top, sx, line);
          if (faces & bits.bottom) context.fillRect(left, top + sy - line, sx, line);
          if (faces & bits.left) context.fillRect(left, top, line, sy);
          if (faces & bits.right) context.fillRect(left + sx - line, top, line, sy);
        }
      }
    }

    drawCrosshair(context, plane, g, canvas) {
      const { row, col } = crossing(this.volume, plane, this.pos);
      const sx = canvas.width / g.cols;
      const sy = canvas.height / g.rows;
      context.save();
      context.strokeStyle = "rgba(79, 179, 255, 0.55)";
      context.lineWidth = Math.max(1, (window.devicePixelRatio || 1));
      context.setLineDash([4 * context.lineWidth, 4 * context.lineWidth]);
      context.beginPath();
      context.moveTo(0, (row + 0.5) * sy);
      context.lineTo(canvas.width, (row + 0.5) * sy);
      context.moveTo((col + 0.5) * sx, 0);
      context.lineTo((col + 0.5) * sx, canvas.height);
      context.stroke();
      context.restore();
    }
  }

  function setWindow(name) {
    state.window = name;
    for (const button of document.querySelectorAll(".window-preset")) {
      button.classList.toggle("selected", button.dataset.window === name);
    }
    const [level, width] = payload.windows[name];
    document.getElementById("window-values").textContent = `level ${level} HU, width ${width} HU`;
    viewers.forEach((v) => v.render());
  }

  function setContours(shown) {
    state.contours = shown;
    const box = document.getElementById("show-contours");
    if (box) box.checked = shown;
    viewers.forEach((v) => { v.showLegend(); v.render(); });
  }

  const KEY_WINDOWS = { l: "lung", m: "mediastinal", b: "bone", w: "wide" };
  document.addEventListener("keydown", (event) => {
    const tag = event.target.tagName;
    if (tag === "SELECT" || (tag === "INPUT" && event.target.type === "range")) return; // native keys there
    if (KEY_WINDOWS[event.key] && payload.windows[KEY_WINDOWS[event.key]]) {
      setWindow(KEY_WINDOWS[event.key]);
      return;
    }
    if (event.key === "c" && document.getElementById("show-contours")) {
      setContours(!state.contours);
      return;
    }
    const delta = { ArrowUp: 1, ArrowRight: 1, PageUp: 5, ArrowDown: -1, ArrowLeft: -1, PageDown: -5 }[event.key];
    if (delta === undefined || !state.active) return;
    event.preventDefault();
    state.active.viewer.step(state.active.plane, delta);
  });

  document.querySelectorAll(".viewer").forEach((root) => {
    const set = payload.sets.find((s) => s.key === root.dataset.set);
    viewers.push(new Viewer(root, set));
  });
  state.active = viewers.length ? { viewer: viewers[0], plane: "axial" } : null;
  document.querySelectorAll(".window-preset").forEach((button) => {
    button.addEventListener("click", () => setWindow(button.dataset.window));
  });
  const link = document.getElementById("link-slices");
  if (link) link.addEventListener("change", () => { state.linked = link.checked; });
  const cross = document.getElementById("show-crosshair");
  if (cross) cross.addEventListener("change", () => { state.crosshair = cross.checked; viewers.forEach((v) => v.render()); });
  const contours = document.getElementById("show-contours");
  if (contours) contours.addEventListener("change", () => setContours(contours.checked));
  if (viewers.length) setWindow(state.window);
  document.body.dataset.ready = "true"; // tests wait for this
})();
