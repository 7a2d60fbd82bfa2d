// How values read on the page: labels for API enums, times, test results.

export const MODE_LABELS = { cloud: "Cloud", on_premise: "On-premise" };

export const MEDIA_TYPES = [
  ["json", "JSON"],
  ["xml", "XML"],
  ["urlencoded", "URL-encoded form"],
  ["plaintext", "Plain text"],
  ["csv", "CSV"],
];

const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto", style: "short" });
const absolute = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

/** "12 sec. ago", "5 min. ago", … or "—" for no time. */
export function ago(iso, now = Date.now()) {
  if (!iso) return "—";
  const seconds = Math.round((Date.parse(iso) - now) / 1000);
  const abs = Math.abs(seconds);
  if (abs < 5) return "just now";
  if (abs < 60) return relative.format(seconds, "second");
  if (abs < 3600) return relative.format(Math.round(seconds / 60), "minute");
  if (abs < 86400) return relative.format(Math.round(seconds / 3600), "hour");
  return relative.format(Math.round(seconds / 86400), "day");
}

/** The full local date and time, for a title or <time> element. */
export function fullTime(iso) {
  return iso ? absolute.format(new Date(iso)) : "";
}

/** "200 · 34 ms" from a test result {ok, status, elapsed_ms, message}. */
export function testSummary(result) {
  const parts = [];
  if (result.status !== null && result.status !== undefined) parts.push(`HTTP ${result.status}`);
  if (typeof result.elapsed_ms === "number") parts.push(`${Math.round(result.elapsed_ms)} ms`);
  return parts.join(" · ");
}
