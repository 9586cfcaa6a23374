// 3D objects (runstream.Object3D) in a three.js viewer: point clouds (the SDK's ".pts.json":
// points coloured by category or rgb, boxes as line segments, vectors as lines) and meshes
// (OBJ, glTF/GLB, STL, PLY through three's loaders), with orbit controls (drag to turn, wheel
// to zoom, right-drag to pan). three.js is imported when a viewer is first shown, so pages
// without 3D objects never parse it. Bytes are fetched here with credentials and handed to the
// loaders' parse(): a loader's own fetch of a blob: URL would be refused by the UI's CSP.

import type { RunFile } from "../answers";
import { h } from "../dom";
import { fetchBytes } from "./fetch";
import { metaOf } from "./steps";

type Three = typeof import("three");
type Object3D = import("three").Object3D;

/** Category colours (the same ten as the charts' classes). */
const CATEGORY = [0x1f77b4, 0xff7f0e, 0x2ca02c, 0xd62728, 0x9467bd, 0x8c564b, 0xe377c2, 0x7f7f7f, 0xbcbd22, 0x17becf];

/** The SDK's point-cloud JSON (wandb's "lidar/beta" scene, simplified). */
interface PointScene {
  type?: string;
  points: number[][];
  boxes?: Array<{ corners: number[][]; label?: string; color?: number[] }>;
  vectors?: Array<{ start: number[]; end: number[]; color?: number[] }>;
}

/** The file's 3D format: meta.format, else its extension (".pts.json" for the SDK's point clouds). */
export function object3dFormat(f: RunFile): string {
  const name = (f.path.split("/").pop() ?? "").toLowerCase();
  if (name.endsWith(".pts.json") || name.endsWith(".json")) return "pts.json";
  const format = metaOf(f).format;
  if (typeof format === "string" && format) return format.toLowerCase().replace(/^\./, "");
  return name.split(".").pop() ?? "";
}

/** An rgb triple as wandb gives it (0..255), or 0..1 floats, as a three.js colour number. */
function rgbOf(c: number[] | undefined, fallback: number): number {
  if (!c || c.length < 3) return fallback;
  const scale = c.every((v) => v <= 1) && c.some((v) => v > 0 && v < 1) ? 255 : 1;
  const byte = (v: number) => Math.max(0, Math.min(255, Math.round(v * scale)));
  return (byte(c[0]) << 16) | (byte(c[1]) << 8) | byte(c[2]);
}

function pointCloud(THREE: Three, scene: PointScene): Object3D {
  const group = new THREE.Group();
  const rows = scene.points ?? [];
  const positions = new Float32Array(rows.length * 3);
  const colors = new Float32Array(rows.length * 3);
  const color = new THREE.Color();
  // rgb columns in 0..1 or 0..255: one scale for the whole cloud, from its largest value.
  const rgbScale = rows.some((r) => r.length >= 6 && (r[3] > 1 || r[4] > 1 || r[5] > 1)) ? 1 / 255 : 1;
  rows.forEach((r, i) => {
    positions.set([r[0], r[1], r[2]], i * 3);
    if (r.length >= 6) color.setRGB(r[3] * rgbScale, r[4] * rgbScale, r[5] * rgbScale);
    else if (r.length === 4) color.setHex(CATEGORY[((Math.round(r[3]) % CATEGORY.length) + CATEGORY.length) % CATEGORY.length]);
    else color.setHex(0x3a6fb0);
    colors.set([color.r, color.g, color.b], i * 3);
  });
  const geometry = new THREE.BufferGeometry();
  geometry.setAttribute("position", new THREE.BufferAttribute(positions, 3));
  geometry.setAttribute("color", new THREE.BufferAttribute(colors, 3));
  group.add(new THREE.Points(geometry, new THREE.PointsMaterial({ size: 3, sizeAttenuation: false, vertexColors: true })));
  // A box's 8 corners in wandb's order: 0-3 one face, 4-7 the other, i and i+4 joined.
  const EDGES = [[0, 1], [1, 2], [2, 3], [3, 0], [4, 5], [5, 6], [6, 7], [7, 4], [0, 4], [1, 5], [2, 6], [3, 7]];
  for (const box of scene.boxes ?? []) {
    if (!Array.isArray(box.corners) || box.corners.length !== 8) continue;
    const segment = new Float32Array(EDGES.flatMap(([a, b]) => [...box.corners[a], ...box.corners[b]]));
    const g = new THREE.BufferGeometry();
    g.setAttribute("position", new THREE.BufferAttribute(segment, 3));
    const lines = new THREE.LineSegments(g, new THREE.LineBasicMaterial({ color: rgbOf(box.color, 0x00c000) }));
    lines.name = box.label ?? "";
    group.add(lines);
  }
  for (const v of scene.vectors ?? []) {
    if (!v.start || !v.end) continue;
    const g = new THREE.BufferGeometry().setFromPoints([new THREE.Vector3(...v.start.slice(0, 3)), new THREE.Vector3(...v.end.slice(0, 3))]);
    group.add(new THREE.Line(g, new THREE.LineBasicMaterial({ color: rgbOf(v.color, 0xd62728) })));
  }
  return group;
}

/** A mesh file through three's loader for its format. */
async function mesh(THREE: Three, format: string, bytes: ArrayBuffer): Promise<Object3D> {
  const material = new THREE.MeshStandardMaterial({ color: 0x8aa6c8, metalness: 0.1, roughness: 0.7, side: THREE.DoubleSide });
  if (format === "obj") {
    const { OBJLoader } = await import("three/examples/jsm/loaders/OBJLoader.js");
    const group = new OBJLoader().parse(new TextDecoder().decode(bytes));
    group.traverse((o) => { if ((o as import("three").Mesh).isMesh) (o as import("three").Mesh).material = material; });
    return group;
  }
  if (format === "stl") {
    const { STLLoader } = await import("three/examples/jsm/loaders/STLLoader.js");
    const geometry = new STLLoader().parse(bytes);
    geometry.computeVertexNormals();
    return new THREE.Mesh(geometry, material);
  }
  if (format === "ply") {
    const { PLYLoader } = await import("three/examples/jsm/loaders/PLYLoader.js");
    const geometry = new PLYLoader().parse(bytes);
    // A PLY without faces is a point cloud.
    if (!geometry.index) {
      const hasColor = !!geometry.getAttribute("color");
      return new THREE.Points(geometry, new THREE.PointsMaterial({ size: 3, sizeAttenuation: false, vertexColors: hasColor, color: hasColor ? 0xffffff : 0x3a6fb0 }));
    }
    geometry.computeVertexNormals();
    return new THREE.Mesh(geometry, material);
  }
  if (format === "gltf" || format === "glb") {
    const { GLTFLoader } = await import("three/examples/jsm/loaders/GLTFLoader.js");
    // A .gltf's buffers must be embedded (data: URIs): the file stands alone, with no neighbours to load.
    // They are decoded here: the loader would fetch() them, which the UI's CSP (connect-src) refuses.
    const loader = new GLTFLoader();
    loader.register((parser) => ({
      name: "runstream_embedded_buffers",
      loadBufferView: (index: number) => {
        const view = parser.json.bufferViews?.[index];
        const uri: unknown = parser.json.buffers?.[view?.buffer]?.uri;
        if (typeof uri !== "string" || !uri.startsWith("data:")) return null;
        const bytes = dataUriBytes(uri);
        const start = view.byteOffset ?? 0;
        return Promise.resolve(bytes.buffer.slice(start, start + (view.byteLength ?? 0)) as ArrayBuffer);
      },
    }));
    const gltf = await loader.parseAsync(format === "gltf" ? new TextDecoder().decode(bytes) : bytes, "");
    return gltf.scene;
  }
  throw new Error(`3D files of format "${format}" cannot be shown (obj, gltf, glb, stl, ply and point clouds can)`);
}

/** The bytes of a base64 (or percent-encoded) data: URI. */
function dataUriBytes(uri: string): Uint8Array {
  const comma = uri.indexOf(",");
  const body = uri.slice(comma + 1);
  if (uri.slice(0, comma).endsWith(";base64")) return Uint8Array.from(atob(body), (c) => c.charCodeAt(0));
  return new TextEncoder().encode(decodeURIComponent(body));
}

function webglAvailable(): boolean {
  try { return !!document.createElement("canvas").getContext("webgl2"); } catch { return false; }
}

/**
 * A viewer for one file in a box of `width` x `height`; its canvas gets data-drawn once painted.
 * `dispose` (called when the tab closes) frees the GPU resources.
 */
export function object3dView(f: RunFile, onError: (err: unknown) => void, signal?: AbortSignal,
                             width = 480, height = 360): { el: HTMLElement; dispose: () => void } {
  const box = h("div.media-3d", { style: { width: `${width}px`, height: `${height}px` } }, h("p.muted", null, "loading the 3D viewer…"));
  const facts = h("div.muted.media-facts");
  const el = h("div.media-3d-box", null, box, facts);
  let dispose = () => {};
  if (!webglAvailable()) {
    box.replaceChildren(h("p.muted", null, "this browser offers no WebGL 2: the 3D object cannot be drawn"));
    return { el, dispose };
  }
  let disposed = false;
  const show = async () => {
    const format = object3dFormat(f);
    const [THREE, { OrbitControls }, bytes] = await Promise.all([
      import("three"), import("three/examples/jsm/controls/OrbitControls.js"), fetchBytes(f.url, signal)]);
    if (signal?.aborted || disposed) return;
    let object: Object3D;
    if (format === "pts.json") {
      let scene: PointScene;
      try { scene = JSON.parse(new TextDecoder().decode(bytes)) as PointScene; }
      catch (err) { throw new Error(`${f.path}: not a point-cloud JSON file (${String(err)})`); }
      object = pointCloud(THREE, scene);
    } else {
      object = await mesh(THREE, format, bytes);
    }
    const scene = new THREE.Scene();
    scene.background = new THREE.Color(0x111418);
    scene.add(object, new THREE.AmbientLight(0xffffff, 0.6));
    const light = new THREE.DirectionalLight(0xffffff, 1.6);
    light.position.set(1, 2, 3);
    scene.add(light);
    // Frame the object: the camera at 2 radii from the bounding sphere's centre, looking at it.
    const bounds = new THREE.Box3().setFromObject(object);
    const sphere = bounds.isEmpty() ? new THREE.Sphere(new THREE.Vector3(), 1) : bounds.getBoundingSphere(new THREE.Sphere());
    const radius = sphere.radius || 1;
    const camera = new THREE.PerspectiveCamera(50, width / height, radius / 1000, radius * 100);
    // Point clouds (lidar scans, wandb's scenes) are z-up; meshes keep three's y-up.
    const zUp = format === "pts.json";
    if (zUp) camera.up.set(0, 0, 1);
    const view = zUp ? new THREE.Vector3(1.2, -1.6, 1.1) : new THREE.Vector3(1.2, 0.9, 1.6);
    camera.position.copy(sphere.center).add(view.normalize().multiplyScalar(radius * 2.4));
    // preserveDrawingBuffer: a screenshot or a read of the canvas sees the last frame.
    const renderer = new THREE.WebGLRenderer({ antialias: true, preserveDrawingBuffer: true });
    renderer.setPixelRatio(window.devicePixelRatio || 1);
    renderer.setSize(width, height);
    const controls = new OrbitControls(camera, renderer.domElement);
    controls.target.copy(sphere.center);
    const render = () => renderer.render(scene, camera);
    // Drawn on demand (each move of the controls), not in a loop: an idle tab costs nothing.
    controls.addEventListener("change", render);
    controls.update();
    render();
    renderer.domElement.classList.add("media-3d-canvas");
    renderer.domElement.dataset.drawn = "1";
    box.replaceChildren(renderer.domElement);
    const m = metaOf(f);
    const points = typeof m.points === "number" ? m.points : format === "pts.json" ? (object.children[0] as import("three").Points)
      .geometry.getAttribute("position").count : undefined;
    facts.textContent = [format, points !== undefined ? `${points.toLocaleString()} points` : "",
      typeof m.original_points === "number" ? `sampled from ${m.original_points.toLocaleString()}` : "",
      "drag to turn · wheel to zoom · right-drag to pan"].filter(Boolean).join(" · ");
    dispose = () => {
      controls.dispose();
      object.traverse((o) => {
        const g = (o as import("three").Mesh).geometry;
        if (g) g.dispose();
      });
      renderer.dispose();
      renderer.forceContextLoss();  // give the WebGL context back now, not when collected
    };
  };
  // Started once the box is near the screen: a run with many 3D keys opens contexts only for those looked at.
  const seen = new IntersectionObserver((entries) => {
    if (!entries.some((e) => e.isIntersecting)) return;
    seen.disconnect();
    show().catch((err) => { if (!signal?.aborted) { box.replaceChildren(h("p.muted", null, "could not draw the 3D object")); onError(err); } });
  }, { rootMargin: "200px" });
  seen.observe(box);
  return { el, dispose: () => { if (disposed) return; disposed = true; seen.disconnect(); dispose(); } };
}
