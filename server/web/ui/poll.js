// Repeat a refresh while the tab is visible; stop when the view goes away.

/**
 * poll(refresh, 2000) runs refresh now and then every 2 s (never two at
 * once), pauses while the tab is hidden, refreshes at once when it shows
 * again. Returns stop().
 */
export function poll(refresh, intervalMs) {
  let timer = null;
  let running = false;
  let stopped = false;

  async function tick() {
    window.clearTimeout(timer);
    if (stopped || running) return;
    if (!document.hidden) {
      running = true;
      try {
        await refresh();
      } finally {
        running = false;
      }
    }
    if (!stopped) timer = window.setTimeout(tick, intervalMs);
  }

  const onVisible = () => {
    if (!document.hidden) tick();
  };
  document.addEventListener("visibilitychange", onVisible);
  tick();
  return () => {
    stopped = true;
    window.clearTimeout(timer);
    document.removeEventListener("visibilitychange", onVisible);
  };
}
