// The courier's map, drawn by the page as SVG: no tile server, no external request. The frame
// fits the fixes seen so far (at least about a kilometre across, so a courier standing still is
// not magnified into noise), projected equirectangularly around their centre, with a light
// grid every 250 m, the trail and the courier's marker with its accuracy circle.

import type { CourierTrack } from "./store.js";

const NS = "http://www.w3.org/2000/svg";
export const MAP_WIDTH = 400;
export const MAP_HEIGHT = 260;
const MIN_SPAN_M = 1200;
const METRES_PER_DEGREE = 111_320;
const GRID_M = 250;

function svg<K extends keyof SVGElementTagNameMap>(tag: K, attrs: Record<string, string | number> = {}): SVGElementTagNameMap[K] {
  const element = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) element.setAttribute(name, String(value));
  return element;
}

export interface CourierMap {
  element: SVGSVGElement;
  update(track: CourierTrack, label: string): void;
}

export function courierMap(): CourierMap {
  const title = svg("title");
  const element = svg("svg", { viewBox: `0 0 ${MAP_WIDTH} ${MAP_HEIGHT}`, class: "order-map", role: "img", "data-testid": "order-map" });
  const grid = svg("g", { class: "map-grid" });
  const trail = svg("polyline", { class: "map-trail", fill: "none" });
  const accuracy = svg("circle", { class: "map-accuracy", r: 0 });
  const marker = svg("circle", { class: "map-marker", r: 7, "data-testid": "courier-marker" });
  const name = svg("text", { class: "map-label" });
  const empty = svg("text", { class: "map-empty", x: MAP_WIDTH / 2, y: MAP_HEIGHT / 2, "text-anchor": "middle" });
  element.append(title, svg("rect", { class: "map-ground", x: 0, y: 0, width: MAP_WIDTH, height: MAP_HEIGHT }), grid, trail, accuracy, marker, name, empty);

  const update = (track: CourierTrack, label: string) => {
    const fixes = track.fixes;
    const last = fixes[fixes.length - 1];
    element.classList.toggle("stale", track.stale);
    marker.style.display = last ? "" : "none";
    name.style.display = last ? "" : "none";
    empty.textContent = last ? "" : "No position yet";
    title.textContent = last ? `Map: ${label}` : "Map: no courier position yet";
    element.setAttribute("aria-label", title.textContent);
    if (!last) {
      grid.replaceChildren();
      trail.setAttribute("points", "");
      accuracy.setAttribute("r", "0");
      return;
    }
    // The frame: the fixes' bounding box in metres around its centre, padded, at one scale.
    const lat0 = (Math.min(...fixes.map((f) => f.lat)) + Math.max(...fixes.map((f) => f.lat))) / 2;
    const lng0 = (Math.min(...fixes.map((f) => f.lng)) + Math.max(...fixes.map((f) => f.lng))) / 2;
    const cos = Math.cos((lat0 * Math.PI) / 180);
    const metres = (f: { lat: number; lng: number }) => ({ x: (f.lng - lng0) * METRES_PER_DEGREE * cos, y: (f.lat - lat0) * METRES_PER_DEGREE });
    const points = fixes.map(metres);
    const spanX = Math.max(MIN_SPAN_M, ...points.map((p) => Math.abs(p.x) * 2));
    const spanY = Math.max(MIN_SPAN_M * (MAP_HEIGHT / MAP_WIDTH), ...points.map((p) => Math.abs(p.y) * 2));
    const scale = Math.min((MAP_WIDTH * 0.8) / spanX, (MAP_HEIGHT * 0.8) / spanY);
    const screen = (p: { x: number; y: number }) => ({ x: MAP_WIDTH / 2 + p.x * scale, y: MAP_HEIGHT / 2 - p.y * scale });

    const lines: SVGElement[] = [];
    const step = GRID_M * scale;
    for (let x = (MAP_WIDTH / 2) % step; x < MAP_WIDTH; x += step) lines.push(svg("line", { x1: x.toFixed(1), y1: 0, x2: x.toFixed(1), y2: MAP_HEIGHT }));
    for (let y = (MAP_HEIGHT / 2) % step; y < MAP_HEIGHT; y += step) lines.push(svg("line", { x1: 0, y1: y.toFixed(1), x2: MAP_WIDTH, y2: y.toFixed(1) }));
    grid.replaceChildren(...lines);

    trail.setAttribute("points", points.map((p) => screen(p)).map((s) => `${s.x.toFixed(1)},${s.y.toFixed(1)}`).join(" "));
    const here = screen(metres(last));
    marker.setAttribute("cx", here.x.toFixed(1));
    marker.setAttribute("cy", here.y.toFixed(1));
    accuracy.setAttribute("cx", here.x.toFixed(1));
    accuracy.setAttribute("cy", here.y.toFixed(1));
    accuracy.setAttribute("r", Math.max(0, last.accuracyM * scale).toFixed(1));
    name.setAttribute("x", (here.x + 11).toFixed(1));
    name.setAttribute("y", (here.y + 4).toFixed(1));
    name.textContent = last.courierId;
  };
  update({ fixes: [], stale: false }, "");
  return { element, update };
}
