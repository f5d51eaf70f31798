"""A drawing surface for one slice: students outline the tumour in the browser; only the finished outline is sent.

Strokes are drawn on a canvas at the pointer's own rate (mouse, touch or pen, through pointer events); the
outlines travel to the server once, on **Submit outline**, as closed polygons in the slice's pixel coordinates
(x right, y down, pixel (r, c) covering [c, c + 1) x [r, r + 1)), where :func:`mriseg.app.classroom.rasterise`
turns them into a mask on the slice's own grid.
"""

from __future__ import annotations

import streamlit as st

from mriseg.app.threshold_view import data_url

DRAWING_CSS = """
.draw {font-family: var(--st-font, sans-serif); color: var(--st-text-color, #fafafa); max-width: 100%;}
.tools {display: flex; flex-wrap: wrap; gap: 0.4rem; margin-bottom: 0.5rem; align-items: center;}
.tools button {font: inherit; font-size: 0.95rem; padding: 0.35rem 0.7rem; border-radius: 0.4rem; cursor: pointer;
    border: 1px solid rgba(128, 128, 128, 0.5); background: transparent; color: inherit; min-height: 2.4rem;}
.tools button[aria-pressed=true] {background: rgba(240, 180, 41, 0.25); border-color: #f0b429;}
.tools button.submit {background: #ff4b4b; border-color: #ff4b4b; color: white; font-weight: 600;}
.stage {overflow: auto; max-width: 100%; max-height: var(--stage-height, 70vh); border-radius: 0.25rem;}
.stage canvas {display: block; touch-action: none; cursor: crosshair; width: 100%;
    max-width: none;}
.hint {font-size: 0.85rem; opacity: 0.8; margin-top: 0.3rem;}
"""

DRAWING_HTML = """
<div class="draw">
  <div class="tools" role="toolbar" aria-label="Drawing tools">
    <button type="button" class="tool" data-tool="freehand" aria-pressed="true">Freehand</button>
    <button type="button" class="tool" data-tool="polygon" aria-pressed="false">Polygon</button>
    <button type="button" class="close-shape" hidden>Close shape</button>
    <button type="button" class="undo">Undo</button>
    <button type="button" class="clear">Clear</button>
    <button type="button" class="zoom-out" aria-label="Zoom out">−</button>
    <button type="button" class="zoom-in" aria-label="Zoom in">+</button>
    <button type="button" class="submit">Submit outline</button>
  </div>
  <div class="stage"><canvas role="application" aria-label="Draw your outline"></canvas></div>
  <div class="hint"></div>
</div>
"""

# State lives in the module, keyed by the slice: a rerun may hand over a fresh element, and a half-drawn outline
# must survive it. Points are kept in slice pixels; the canvas has a few device pixels per slice pixel so lines
# stay smooth.
DRAWING_JS = """
const drawings = new Map();

function stateFor(key) {
  if (!drawings.has(key)) drawings.set(key, {shapes: [], current: null, tool: 'freehand', zoom: 1,
                                             startedAt: null, image: null});
  return drawings.get(key);
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  const root = parentElement.querySelector('.draw');
  const canvas = root.querySelector('canvas');
  const state = stateFor(data.key);
  const width = data.width, height = data.height, scale = Math.max(1, Math.ceil(768 / Math.max(width, height)));
  canvas.width = width * scale; canvas.height = height * scale;
  root.querySelector('.stage').style.setProperty('--stage-height', data.stage_height);
  const context = canvas.getContext('2d');
  const hint = root.querySelector('.hint');

  const redraw = () => {
    context.clearRect(0, 0, canvas.width, canvas.height);
    if (state.image) context.drawImage(state.image, 0, 0, canvas.width, canvas.height);
    context.lineWidth = Math.max(2, scale * 0.8);
    context.lineJoin = 'round';
    const path = (points, close) => {
      context.beginPath();
      points.forEach(([x, y], i) => i ? context.lineTo(x * scale, y * scale) : context.moveTo(x * scale, y * scale));
      if (close) context.closePath();
    };
    for (const shape of state.shapes) {
      path(shape, true);
      context.fillStyle = 'rgba(40, 220, 90, 0.3)'; context.fill();
      context.strokeStyle = 'rgb(60, 220, 90)'; context.stroke();
    }
    if (state.current && state.current.length) {
      path(state.current, false);
      context.strokeStyle = 'rgb(250, 220, 40)'; context.stroke();
    }
    canvas.dataset.shapes = String(state.shapes.length);
    hint.textContent = state.tool === 'freehand'
      ? 'Hold and drag around the tumour; let go to close the loop.'
      : 'Tap each corner; tap the first point or Close shape to finish.';
    root.querySelector('.close-shape').hidden = state.tool !== 'polygon';
  };

  // Zoom widens the canvas inside its scrolling stage: the page itself never scrolls sideways.
  const sizeCanvas = () => { canvas.style.width = `calc(min(100%, ${data.stage_height}) * ${state.zoom})`; };

  if (state.imageUrl !== data.image_url) {
    state.imageUrl = data.image_url;
    const image = new Image();
    image.onload = () => { state.image = image; redraw(); };
    image.src = data.image_url;
  }

  const toSlice = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) / box.width * width, (event.clientY - box.top) / box.height * height];
  };
  const finishShape = () => {
    if (state.current && state.current.length >= 3) state.shapes.push(state.current);
    state.current = null;
    redraw();
  };

  // A tap this close to the first corner (12 screen pixels) closes the polygon.
  const closeDistance = () => 12 * width / canvas.getBoundingClientRect().width;

  canvas.onpointerdown = (event) => {
    event.preventDefault();
    if (state.startedAt === null) state.startedAt = performance.now();
    const point = toSlice(event);
    if (state.tool === 'freehand') {
      canvas.setPointerCapture(event.pointerId);
      state.current = [point];
    } else if (state.current && state.current.length >= 3 &&
               Math.hypot(point[0] - state.current[0][0], point[1] - state.current[0][1]) < closeDistance()) {
      finishShape();
      return;
    } else {
      (state.current = state.current || []).push(point);
    }
    redraw();
  };
  canvas.onpointermove = (event) => {
    if (state.tool !== 'freehand' || !state.current || !canvas.hasPointerCapture(event.pointerId)) return;
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
    for (const each of (events.length ? events : [event])) {
      const point = toSlice(each), last = state.current[state.current.length - 1];
      // A third of a slice pixel apart: the full detail of the hand, without thousands of points.
      if (Math.hypot(point[0] - last[0], point[1] - last[1]) >= 0.34) state.current.push(point);
    }
    redraw();
  };
  canvas.onpointerup = canvas.onpointercancel = (event) => {
    if (state.tool !== 'freehand' || !state.current) return;
    if (canvas.hasPointerCapture(event.pointerId)) canvas.releasePointerCapture(event.pointerId);
    finishShape();
  };

  root.querySelectorAll('.tool').forEach((button) => {
    button.setAttribute('aria-pressed', String(button.dataset.tool === state.tool));
    button.onclick = () => {
      state.tool = button.dataset.tool; state.current = null;
      root.querySelectorAll('.tool').forEach((b) => b.setAttribute('aria-pressed', String(b === button)));
      redraw();
    };
  });
  root.querySelector('.close-shape').onclick = finishShape;
  root.querySelector('.undo').onclick = () => {
    if (state.current) state.current = null; else state.shapes.pop();
    redraw();
  };
  root.querySelector('.clear').onclick = () => { state.shapes = []; state.current = null; redraw(); };
  root.querySelector('.zoom-in').onclick = () => { state.zoom = Math.min(4, state.zoom * 1.5); sizeCanvas(); };
  root.querySelector('.zoom-out').onclick = () => { state.zoom = Math.max(1, state.zoom / 1.5); sizeCanvas(); };
  root.querySelector('.submit').onclick = () => {
    const seconds = state.startedAt === null ? 0 : (performance.now() - state.startedAt) / 1000;
    const shapes = state.shapes.map((shape) => shape.map(([x, y]) => [Math.round(x * 100) / 100,
                                                                       Math.round(y * 100) / 100]));
    setTriggerValue('outline', {shapes: shapes, seconds: seconds, sent_at: Date.now()});
  };
  sizeCanvas();
  redraw();
}
"""

_DRAWING = st.components.v2.component("mriseg_drawing", html=DRAWING_HTML, css=DRAWING_CSS, js=DRAWING_JS)


def drawing_surface(key: str, image_png: bytes, shape: tuple[int, int], on_outline, stage_height: str = "70vh"):
    """The slice with the drawing tools; ``on_outline`` runs when **Submit outline** is pressed, and reads
    ``st.session_state[key]["outline"]``: ``{"shapes": [[[x, y], ...], ...], "seconds": float}``.

    Args:
        key: the widget key, also naming the drawing kept in the browser (one per class and slice).
        image_png: the slice as shown.
        shape: (H, W) of the slice's pixel grid.
        on_outline: the callback for a submitted outline.
        stage_height: the most the picture may take of the screen's height.
    """
    data = {"key": key, "image_url": data_url(image_png), "width": int(shape[1]), "height": int(shape[0]),
            "stage_height": stage_height}
    return _DRAWING(data=data, key=key, on_outline_change=on_outline)
