// The volume viewer: NiiVue (the field's WebGL viewer, vendored as niivue.umd.js) showing the scan in axial,
// coronal and sagittal planes linked by a crosshair, with a 3D rendering, and the tumour mask at a threshold that
// moves in the browser. The mask arrives once as a code volume: a voxel is tumour at threshold step s when
// first <= s < end, with code = first + 256 * end (see mriseg/app/volume_viewer.py); each move of the slider
// rebuilds the overlay from it, with no server round trip.
import './niivue.umd.js';

const { Niivue } = globalThis.niivue;
const MULTIPLANAR = 3, RENDER = 4, SHOW_RENDER_ALWAYS = 1, GRID = 2;
const PLANES = ['axial', 'coronal', 'sagittal'];

async function fetchBuffer(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.arrayBuffer();
}

// The voxels tumour at some step (code not 0): the only ones a threshold step can change.
function candidatesOf(code) {
  let n = 0;
  for (let i = 0; i < code.length; i++) n += code[i] !== 0;
  const candidates = new Uint32Array(n);
  for (let i = 0, k = 0; i < code.length; i++) if (code[i] !== 0) candidates[k++] = i;
  return candidates;
}

function applyStep(state, step) {
  const overlay = state.nv.volumes[1];
  const img = overlay.img, code = state.code;
  let count = 0;
  for (const i of state.candidates) {  // every other voxel stays 0
    const c = code[i];
    const on = (c & 255) <= step && step < (c >> 8);
    img[i] = on ? 1 : 0;
    count += on;
  }
  overlay.cal_min = 0.5;
  overlay.cal_max = 1;
  state.step = step;
  state.count = count;
  state.nv.updateGLVolume();
}

// Tumour voxels on the crosshair's slice of each plane, at the current step (the three planes only).
function planeCounts(state) {
  const [nx, ny, nz] = state.dims;
  const [x, y, z] = state.vox;
  const img = state.nv.volumes[1].img;
  const at = (i, j, k) => img[(k * ny + j) * nx + i];
  const counts = { axial: 0, coronal: 0, sagittal: 0 };
  for (let j = 0; j < ny; j++) for (let i = 0; i < nx; i++) counts.axial += at(i, j, z);
  for (let k = 0; k < nz; k++) for (let i = 0; i < nx; i++) counts.coronal += at(i, y, k);
  for (let k = 0; k < nz; k++) for (let j = 0; j < ny; j++) counts.sagittal += at(x, j, k);
  return counts;
}

function describe(state) {
  const { root, data } = state;
  const threshold = data.steps[state.step];
  const millilitres = data.voxel_ml ? ` · ${(state.count * data.voxel_ml).toFixed(1)} mL` : '';
  root.querySelector('.value').textContent = threshold.toFixed(2);
  root.querySelector('.reading').textContent =
    `Tumour at threshold ${threshold.toFixed(2)}: ${state.count.toLocaleString('en')} voxels${millilitres}`;
  const canvas = root.querySelector('canvas');
  const counts = planeCounts(state);
  canvas.dataset.step = String(state.step);
  canvas.dataset.voxels = String(state.count);
  canvas.dataset.crosshair = state.vox.join(',');
  canvas.dataset.planeCounts = JSON.stringify(counts);
  canvas.dataset.tiles = JSON.stringify(state.nv.screenSlices.map((tile) => ({
    plane: tile.axCorSag <= 2 ? PLANES[tile.axCorSag] : 'render',
    box: tile.leftTopWidthHeight.map((v) => v / (window.devicePixelRatio || 1)),
  })));
  canvas.dataset.ready = '1';
}

async function build(parentElement, data, setStateValue) {
  const root = parentElement.querySelector('.viewer');
  root.style.setProperty('--viewer-height', data.height);
  root.style.setProperty('--text-size', data.text_size);
  const canvas = root.querySelector('canvas');
  canvas.dataset.ready = '0';
  const started = performance.now();
  const nv = new Niivue({
    backColor: [0, 0, 0, 1], show3Dcrosshair: true, isColorbar: false, logLevel: 'error', loadingText: '',
    multiplanarShowRender: SHOW_RENDER_ALWAYS, multiplanarLayout: GRID, isRadiologicalConvention: true,
    textHeight: data.presenter ? 0.05 : 0.035, crosshairColor: [0.94, 0.71, 0.16, 1],
    clipPlaneColor: [0, 0, 0, 0],  // the cut shows the inside, not a coloured plane
  });
  await nv.attachToCanvas(canvas);
  await nv.loadFromArrayBuffer(await fetchBuffer(data.scan_url), 'scan.nii.gz');
  await nv.loadFromArrayBuffer(await fetchBuffer(data.overlay_url), 'mask.nii.gz');
  canvas.dataset.loadMs = String(Math.round(performance.now() - started));  // fetched, decoded, on the GPU
  const overlay = nv.volumes[1];
  overlay.colormap = data.colormap;
  overlay.opacity = data.opacity;
  const code = overlay.img.slice();
  const state = {
    nv, root, data, code, candidates: candidatesOf(code), dims: overlay.hdr.dims.slice(1, 4),
    vox: data.crosshair.slice(), step: data.step, count: 0,
  };
  overlay.img.fill(0);  // from here on the overlay holds the mask of one step
  nv.setSliceType(MULTIPLANAR);
  nv.setClipPlane([0.1, 270, 0]);  // the 3D view cut open through the middle, so the tumour inside shows
  applyStep(state, data.step);
  nv.scene.crosshairPos = nv.vox2frac(state.vox);
  nv.updateGLVolume();
  nv.onLocationChange = (location) => {
    state.vox = location.vox.map((v) => Math.round(v));
    describe(state);
  };

  const slider = root.querySelector('input.threshold');
  slider.max = String(data.steps.length - 1);
  slider.value = String(data.step);
  slider.oninput = () => { applyStep(state, Number(slider.value)); describe(state); };
  slider.onchange = () => {
    clearTimeout(state.timer);
    state.timer = setTimeout(() => {  // one rerun for a burst of key presses or a drag
      state.timer = null;
      state.awaiting = Number(slider.value);
      state.sentAt = performance.now();
      setStateValue('threshold', state.data.steps[state.awaiting]);
    }, 250);
  };
  root.querySelectorAll('button[data-layout]').forEach((button) => {
    button.onclick = () => {
      nv.setSliceType(button.dataset.layout === 'render' ? RENDER : MULTIPLANAR);
      root.querySelectorAll('button[data-layout]').forEach((b) => b.classList.toggle('on', b === button));
      describe(state);
    };
  });
  describe(state);
  canvas.dataset.readyMs = String(Math.round(performance.now() - started));  // and drawn, with the overlay
  return state;
}

export default function (component) {
  const { data, parentElement, setStateValue } = component;
  const state = parentElement.__mrisegViewer;
  // The scan and mask are fetched once per case; a rerun with the same case only moves the threshold.
  if (state && state.data.scan_url === data.scan_url && state.data.overlay_url === data.overlay_url) {
    const previous = state.data;
    state.data = data;
    if (!state.nv) return;  // still loading: it starts at the step it was first given
    const overlay = state.nv.volumes[1];
    if (overlay.colormap !== data.colormap || overlay.opacity !== data.opacity) {  // the page's display settings
      overlay.colormap = data.colormap;
      overlay.opacity = data.opacity;
      state.nv.updateGLVolume();
    }
    if (previous.crosshair[2] !== data.crosshair[2]) {  // the page's slice slider moved: follow it
      state.vox = data.crosshair.slice();
      state.nv.scene.crosshairPos = state.nv.vox2frac(state.vox);
      state.nv.drawScene();
      describe(state);
    }
    // The server echoes each value sent; an echo of an older value (keys pressed faster than the page reruns)
    // must not pull the slider back. Any other server value (the sidebar, a reload) moves it.
    if (state.awaiting !== undefined && (data.step === state.awaiting || performance.now() - state.sentAt > 4000)) {
      state.awaiting = undefined;
    }
    if (state.awaiting === undefined && !state.timer && state.step !== data.step) {
      state.root.querySelector('input.threshold').value = String(data.step);
      applyStep(state, data.step);
      describe(state);
    }
    return;
  }
  parentElement.__mrisegViewer = { data };  // a rerun while this one loads finds it in progress
  build(parentElement, data, setStateValue).then((built) => {
    parentElement.__mrisegViewer = built;
  }).catch((error) => {
    const message = parentElement.querySelector('.viewer .reading');
    message.textContent = `The 3D viewer could not start in this browser (${error.message}); the slices above ` +
      'show the same masks.';
    parentElement.querySelector('.viewer canvas').dataset.ready = 'failed';
  });
}
