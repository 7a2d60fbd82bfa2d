// Small line charts drawn by the page itself (SVG, no library, no CDN).

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 300;
const HEIGHT = 80;
const PAD = 4;

function svg(tag, attrs = {}) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  return el;
}

/**
 * lineChart({title: "Requests per minute", values: [3, null, 5, …], unit: "req/min"})
 * -> a <figure> with an SVG line (gaps where a value is null), the latest
 * value and the peak in the caption, and the same as the image's text
 * alternative for screen readers.
 */
export function lineChart({ title, values, unit, digits = 0 }) {
  const known = values.filter((v) => v !== null && v !== undefined);
  const peak = known.length ? Math.max(...known) : 0;
  const top = peak > 0 ? peak : 1;
  const step = values.length > 1 ? (WIDTH - 2 * PAD) / (values.length - 1) : 0;
  const y = (v) => HEIGHT - PAD - (v / top) * (HEIGHT - 2 * PAD);
  const fmt = (v) => `${Number(v).toFixed(digits)} ${unit}`;
  const latest = known.length ? fmt(known[known.length - 1]) : "no data";
  const summary = `${title}: latest ${latest}, peak ${known.length ? fmt(peak) : "no data"}`;

  const chart = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    class: "chart",
    role: "img",
    "aria-label": summary,
    preserveAspectRatio: "none",
  });
  chart.append(svg("line", {
    x1: PAD, y1: HEIGHT - PAD, x2: WIDTH - PAD, y2: HEIGHT - PAD, class: "axis",
  }));
  // One polyline per run of known values, so a gap shows as a gap.
  let run = [];
  const flush = () => {
    if (run.length === 1) {
      const [x, yy] = run[0];
      chart.append(svg("circle", { cx: x, cy: yy, r: 2, class: "point" }));
    } else if (run.length > 1) {
      chart.append(svg("polyline", {
        points: run.map(([x, yy]) => `${x.toFixed(1)},${yy.toFixed(1)}`).join(" "),
        class: "line",
      }));
    }
    run = [];
  };
  values.forEach((v, i) => {
    if (v === null || v === undefined) flush();
    else run.push([PAD + i * step, y(v)]);
  });
  flush();

  const figure = document.createElement("figure");
  figure.className = "chart-card";
  const caption = document.createElement("figcaption");
  const name = document.createElement("span");
  name.className = "chart-title";
  name.textContent = title;
  const value = document.createElement("span");
  value.className = "chart-value";
  value.textContent = latest;
  caption.append(name, " ", value);
  figure.append(caption, chart);
  return figure;
}
