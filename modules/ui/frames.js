// Runs before Gradio's own scripts (put first in the page's <head> by modules/ui/early_script.py: the
// Blocks `head` is added by Gradio's script after it starts, too late to see what its modules keep).
//
// Gradio's status tracker runs a timer that asks for a frame 60 times a second while its event waits, and
// the tracker of the page's loading screen never stops it (the tracker is gone before its event "ends"): a
// page doing nothing kept Chromium drawing, about a tenth of a core (bench/idle_page.py).
// While no tracker on the page is waiting, a tracker's frames come from a half-second timer instead; one
// that starts waiting gets its frames again within half a second. Every other frame is left alone.
(() => {
  const frame = window.requestAnimationFrame.bind(window);
  const cancelFrame = window.cancelAnimationFrame.bind(window);
  const WAITING = '[data-testid=status-tracker].pending, [data-testid=status-tracker].generating';
  window.requestAnimationFrame = (callback) => {
    if (!/statustracker/.test(new Error().stack || '') || document.querySelector(WAITING)) return frame(callback);
    return -setTimeout(() => callback(performance.now()), 500);  // negative: a timer, not a frame
  };
  window.cancelAnimationFrame = (id) => (id < 0 ? clearTimeout(-id) : cancelFrame(id));
})();
