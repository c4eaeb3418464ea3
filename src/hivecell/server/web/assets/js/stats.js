// Live figures of sandboxes: what the server's sampler measures every ~2 s, sent as one
// `sandbox.stats` event per round ({items: [{sandbox_id, cpu_percent, memory_pss_mb, ...}]}).

export const FIGURES = {
  cpu: (s) => `${s.cpu_percent.toFixed(1)} %`,
  mem: (s) => megabytes(s.memory_pss_mb),
  disk: (s) => megabytes(s.disk_used_mb),
  procs: (s) => String(s.processes),
  rtt: (s) => (s.guest_rtt_ms == null ? "no answer" : `${s.guest_rtt_ms.toFixed(1)} ms`),
};

export function megabytes(mb) {
  return mb >= 1024 ? `${(mb / 1024).toFixed(2)} GB` : `${mb.toFixed(1)} MB`;
}

// One line for a task card: CPU and memory of its sandbox.
export function brief(s) {
  return s ? `CPU ${FIGURES.cpu(s)} · ${FIGURES.mem(s)}` : "CPU – · memory –";
}

// Fill every [data-stat] element under `root` from one sample (or dashes without one).
export function fill(root, s) {
  for (const el of root.querySelectorAll("[data-stat]")) {
    el.textContent = s ? FIGURES[el.dataset.stat](s) : "–";
  }
}
