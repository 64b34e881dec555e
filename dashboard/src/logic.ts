// The dashboard's own logic, kept free of React so Vitest can check it.

export type Counts = { total: number; online: number; offline: number };
export type Wave = {
  index: number; percent: number; targeted: number; sent: number; inProgress: number;
  succeeded: number; failed: number; timedOut: number; state: string;
  observing?: number; // succeeded, still inside the health gate's window
};
// One signal of one wave in the health gate's last evaluation (docs/ota.md).
export type HealthSignal = {
  wave: number; signal: string; metric?: string | null; updated: number; updatedDevices: number;
  control: number; controlDevices: number; judged: boolean; worse: boolean; detail: string;
};
export type HealthNow = { at: number; worse: boolean; reason?: string | null; signals: HealthSignal[] };
export type Rollout = {
  id: string; firmware: string; state: string; reason: string | null;
  currentWave: number; targeted: number; createdAt: number; waves?: Wave[];
  healthNow?: HealthNow | null;
};
export type Cell = { lat: number; lon: number; count: number };
export type Summary = {
  devices: Counts;
  firmware: Record<string, number>;
  health: Record<string, Record<string, number>>;
  rates: { in: number; out: number; gateways?: number };
  rollouts: Rollout[];
  geo: { cellDegrees: number; cells: Cell[] };
  history: [number, number, number][];
  ts: number;
};

export const HISTORY_MAX = 360;

// Applies one /api/v1/live frame: a "summary" replaces everything, a
// "changes" frame replaces the sections it carries and appends history.
export function applyFrame(prev: Summary | null, frame: any): Summary | null {
  if (!frame || typeof frame !== "object") return prev;
  if (frame.type === "summary") {
    const { type: _t, ...rest } = frame;
    return { ...rest, history: (frame.history ?? []).slice(-HISTORY_MAX) } as Summary;
  }
  if (frame.type !== "changes" || !prev) return prev;
  const next: Summary = { ...prev, ts: frame.ts ?? prev.ts };
  for (const k of ["devices", "firmware", "health", "rates", "rollouts", "geo"] as const) {
    if (k in frame) (next as any)[k] = frame[k];
  }
  if (Array.isArray(frame.history) && frame.history.length) {
    next.history = [...prev.history, ...frame.history].slice(-HISTORY_MAX);
  }
  return next;
}

// The tier the server's `auto` picks for a range (services/ingest/in_query.c).
export function pickBucket(fromMs: number, toMs: number): "raw" | "1m" | "1h" {
  const span = toMs - fromMs;
  if (span <= 3600_000) return "raw";
  if (span <= 48 * 3600_000) return "1m";
  return "1h";
}

export const RANGES: { label: string; ms: number }[] = [
  { label: "15 min", ms: 15 * 60_000 },
  { label: "1 hour", ms: 3600_000 },
  { label: "6 hours", ms: 6 * 3600_000 },
  { label: "24 hours", ms: 24 * 3600_000 },
  { label: "7 days", ms: 7 * 24 * 3600_000 },
  { label: "30 days", ms: 30 * 24 * 3600_000 },
];

// "1, 10, 100" → [{percent:1},{percent:10},{percent:100}], or an error.
export function parseWaves(text: string): { percent: number }[] | string {
  const parts = text.split(",").map((s) => s.trim()).filter(Boolean);
  if (!parts.length) return "give the waves as percentages, e.g. 1, 10, 100";
  const out: { percent: number }[] = [];
  let last = 0;
  for (const p of parts) {
    const n = Number(p);
    if (!Number.isFinite(n) || n <= 0 || n > 100) return `"${p}" is not a percentage from 0 to 100`;
    if (n <= last) return "each wave must be larger than the one before";
    out.push({ percent: n });
    last = n;
  }
  if (last !== 100) return "the last wave must be 100";
  return out;
}

// "model:x1, site:lab" → {model:"x1", site:"lab"}, or an error.
export function parseTags(text: string): Record<string, string> | string {
  const out: Record<string, string> = {};
  for (const p of text.split(",").map((s) => s.trim()).filter(Boolean)) {
    const i = p.indexOf(":");
    if (i <= 0 || i === p.length - 1) return `"${p}" is not key:value`;
    out[p.slice(0, i)] = p.slice(i + 1);
  }
  return out;
}

// The desired section as typed: a JSON object, or an error.
export function parseDesired(text: string): Record<string, unknown> | string {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    return `not JSON: ${(e as Error).message}`;
  }
  if (!v || typeof v !== "object" || Array.isArray(v)) return "desired must be a JSON object";
  return v as Record<string, unknown>;
}

// Merge-patch from `before` to `after` (RFC 7386): only what changed, null
// for removed keys.
export function mergePatch(before: any, after: any): any {
  if (!after || typeof after !== "object" || Array.isArray(after)) return after;
  const patch: Record<string, unknown> = {};
  const b = before && typeof before === "object" && !Array.isArray(before) ? before : {};
  for (const k of Object.keys(b)) if (!(k in after)) patch[k] = null;
  for (const [k, v] of Object.entries(after)) {
    if (JSON.stringify(b[k]) === JSON.stringify(v)) continue;
    patch[k] = v && typeof v === "object" && !Array.isArray(v) && b[k] && typeof b[k] === "object"
      ? mergePatch(b[k], v) : v;
  }
  return patch;
}

export function formatRate(perSecond: number): string {
  if (perSecond >= 1e6) return `${(perSecond / 1e6).toFixed(1)}M/s`;
  if (perSecond >= 1e3) return `${(perSecond / 1e3).toFixed(1)}k/s`;
  return `${perSecond.toFixed(perSecond < 10 ? 1 : 0)}/s`;
}

export function formatCount(n: number): string {
  return n.toLocaleString("en-US");
}

export function ago(ms: number | null | undefined, now = Date.now()): string {
  if (!ms) return "never";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

// A wave's progress as shares of its targeted devices (0..1 each).
export function waveShares(w: Wave): { succeeded: number; failed: number; inProgress: number; observing: number } {
  const t = Math.max(1, w.targeted);
  return {
    succeeded: w.succeeded / t,
    failed: (w.failed + w.timedOut) / t,
    inProgress: w.inProgress / t,
    observing: (w.observing ?? 0) / t,
  };
}

// The health gate's last evaluation as table rows: per wave and signal,
// the updated devices against the control group. Numbers keep 3
// significant digits; a side without devices shows "–".
export function healthRows(h: HealthNow | null | undefined): {
  key: string; wave: number; name: string; updated: string; control: string; worse: boolean;
}[] {
  if (!h || !Array.isArray(h.signals)) return [];
  const fmt = (v: number, n: number) => (n > 0 ? `${Number(v.toPrecision(3))} (${n})` : "–");
  return h.signals.map((s, i) => ({
    key: `${s.wave}-${s.signal}-${s.metric ?? ""}-${i}`,
    wave: s.wave,
    name: s.metric ? `${s.metric}` : s.signal,
    updated: fmt(s.updated, s.updatedDevices),
    control: fmt(s.control, s.controlDevices),
    worse: !!s.worse,
  }));
}

// Which operator controls apply in a state (the API answers 409 otherwise).
/** The options a firmware rollout and a job share, from their forms'
 * fields (waves, tags, from, success, failure, soak, rate), or what is
 * wrong with them. */
export function rolloutOptions(f: FormData): Record<string, unknown> | string {
  const waves = parseWaves(String(f.get("waves")));
  if (typeof waves === "string") return waves;
  const tags = parseTags(String(f.get("tags") ?? ""));
  if (typeof tags === "string") return tags;
  const target: Record<string, unknown> = {};
  if (Object.keys(tags).length) target.tags = tags;
  if (f.get("from")) target.firmware = String(f.get("from"));
  return {
    target,
    waves,
    successThreshold: Number(f.get("success")),
    failureThreshold: Number(f.get("failure")),
    soakSeconds: Number(f.get("soak")),
    maxPerMinute: Number(f.get("rate")),
  };
}

export function controlsFor(state: string): string[] {
  switch (state) {
    case "scheduled":
    case "running":
      return ["pause", "abort", "rollback"];
    case "paused":
      return ["resume", "abort", "rollback"];
    case "completed":
      return ["rollback"];
    default:
      return [];
  }
}

// Circle radius for a map cell: area proportional to the count.
export function cellRadius(count: number, max: number, maxRadius = 14): number {
  if (count <= 0 || max <= 0) return 0;
  return Math.max(1.5, maxRadius * Math.sqrt(count / max));
}

// A map cell's opacity: denser cells darker, every occupied cell visible.
export function cellOpacity(count: number, max: number): number {
  if (count <= 0 || max <= 0) return 0;
  return Math.min(1, 0.25 + 0.75 * Math.sqrt(count / max));
}
