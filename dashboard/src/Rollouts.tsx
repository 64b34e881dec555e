import { useEffect, useState } from "react";
import { ApiError, call } from "./api";
import { controlsFor, healthRows, Rollout, rolloutOptions, waveShares } from "./logic";

export function RolloutCard({ rollout, onChanged }: { rollout: Rollout; onChanged?: () => void }) {
  const [err, setErr] = useState("");
  const act = async (what: string) => {
    setErr("");
    const paths = {
      pause: "/api/v1/rollouts/{id}/pause",
      resume: "/api/v1/rollouts/{id}/resume",
      abort: "/api/v1/rollouts/{id}/abort",
      rollback: "/api/v1/rollouts/{id}/rollback",
    } as const;
    if (!(what in paths)) return setErr(`unknown action ${what}`);
    try {
      await call("post", paths[what as keyof typeof paths], { path: { id: rollout.id } });
      onChanged?.();
    } catch (e) {
      setErr((e as Error).message);
    }
  };
  return (
    <div className="rollout" data-testid="rollout" data-state={rollout.state}>
      <div className="rollout-head">
        <b>{rollout.firmware ?? `job ${String((rollout as any).document?.operation ?? "")}`}</b>
        <span className={`state state-${rollout.state}`} data-testid="rollout-state">{rollout.state.replace("_", " ")}</span>
        <span className="muted mono">{rollout.id.slice(0, 8)}</span>
        <span className="grow" />
        {controlsFor(rollout.state).map((c) => (
          <button key={c} className="small" onClick={() => act(c)}>{c}</button>
        ))}
      </div>
      {rollout.reason && <div className="muted">{rollout.reason}</div>}
      {(rollout.waves ?? []).map((w) => {
        const s = waveShares(w);
        return (
          <div className="wave" key={w.index} data-testid="wave">
            <span className="wave-label">wave {w.index + 1} · {w.percent}%</span>
            <div className="progress" title={`${w.succeeded} succeeded, ${w.observing ?? 0} under observation, ${w.failed + w.timedOut} failed, ${w.inProgress} installing of ${w.targeted}`}>
              <div className="p-ok" style={{ width: `${100 * s.succeeded}%` }} />
              <div className="p-obs" style={{ width: `${100 * s.observing}%` }} />
              <div className="p-bad" style={{ width: `${100 * s.failed}%` }} />
              <div className="p-run" style={{ width: `${100 * s.inProgress}%` }} />
            </div>
            <span className="wave-count mono" data-testid="wave-count">{w.succeeded}/{w.targeted}</span>
          </div>
        );
      })}
      {healthRows(rollout.healthNow).length > 0 && (
        <table className="health" data-testid="rollout-health">
          <thead>
            <tr><th>wave</th><th>signal</th><th>updated (devices)</th><th>control (devices)</th><th /></tr>
          </thead>
          <tbody>
            {healthRows(rollout.healthNow).map((r) => (
              <tr key={r.key} className={r.worse ? "worse" : ""}>
                <td>{r.wave}</td><td>{r.name}</td><td className="mono">{r.updated}</td>
                <td className="mono">{r.control}</td><td>{r.worse ? "worse" : ""}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {err && <div className="error">{err}</div>}
    </div>
  );
}

type Fw = { version: string; hardware: string; size: number; sha256: string; created: number };

export function FirmwarePage({ liveRollouts }: { liveRollouts: Rollout[] }) {
  const [firmware, setFirmware] = useState<Fw[]>([]);
  const [rollouts, setRollouts] = useState<Rollout[]>([]);
  const [msg, setMsg] = useState("");
  const [err, setErr] = useState("");
  const load = async () => {
    try {
      setFirmware((await call("get", "/api/v1/firmware", { query: { limit: 200 } })).data.items);
      setRollouts((await call("get", "/api/v1/rollouts", { query: { limit: 50 } })).data.items);
    } catch (e) {
      setErr((e as Error).message);
    }
  };
  // The live feed carries active rollouts; a change there refreshes the list.
  const liveKey = JSON.stringify(liveRollouts.map((r) => [r.id, r.state, r.waves?.map((w) => w.succeeded + w.failed)]));
  useEffect(() => {
    load();
  }, [liveKey]);

  const upload = async (ev: React.FormEvent<HTMLFormElement>) => {
    ev.preventDefault();
    setErr("");
    setMsg("");
    const f = new FormData(ev.currentTarget);
    const file = f.get("file") as File | null;
    if (!file || !file.size) return setErr("choose an image file");
    try {
      const r = await call("post", "/api/v1/firmware", { query: { version: String(f.get("version")), hardware: String(f.get("hardware") || "") }, body: await file.arrayBuffer() });
      setMsg(`uploaded ${r.data.version} (${r.data.size} bytes, sha256 ${String(r.data.sha256).slice(0, 12)}…)`);
      load();
    } catch (e) {
      setErr((e as Error).message);
    }
  };

  const create = async (ev: React.FormEvent<HTMLFormElement>) => {
    ev.preventDefault();
    setErr("");
    setMsg("");
    const f = new FormData(ev.currentTarget);
    const options = rolloutOptions(f);
    if (typeof options === "string") return setErr(options);
    const spec = { firmware: String(f.get("firmware")), ...options, onFailure: String(f.get("onFailure")) };
    try {
      const r = await call("post", "/api/v1/rollouts", { body: spec });
      setMsg(`rollout ${r.data.id.slice(0, 8)} created`);
      load();
    } catch (e) {
      setErr(e instanceof ApiError ? `${e.status}: ${e.message}` : (e as Error).message);
    }
  };

  const live = new Map(liveRollouts.map((r) => [r.id, r]));
  return (
    <div className="cols">
      <div className="col">
        <div className="panel">
          <h3>Upload firmware</h3>
          <form onSubmit={upload} className="form">
            <label>Image <input type="file" name="file" /></label>
            <label>Version <input name="version" required placeholder="2.1.0" /></label>
            <label>Hardware <input name="hardware" required placeholder="x1" /></label>
            <button type="submit">Upload and sign</button>
          </form>
        </div>
        <div className="panel">
          <h3>Catalogue</h3>
          <table className="table">
            <thead><tr><th>version</th><th>hardware</th><th className="num">size</th><th>sha256</th></tr></thead>
            <tbody>
              {firmware.map((f) => (
                <tr key={f.version}><td>{f.version}</td><td>{f.hardware || "-"}</td><td className="num">{f.size.toLocaleString()}</td><td className="mono">{f.sha256.slice(0, 16)}…</td></tr>
              ))}
            </tbody>
          </table>
        </div>
      </div>
      <div className="col grow">
        <div className="panel">
          <h3>New rollout</h3>
          <form onSubmit={create} className="form grid2" data-testid="rollout-form">
            <label>Firmware
              <select name="firmware" required>
                {firmware.map((f) => <option key={f.version}>{f.version}</option>)}
              </select>
            </label>
            <label>Waves (%) <input name="waves" defaultValue="1, 10, 100" /></label>
            <label>Target tags <input name="tags" placeholder="model:x1, site:lab" /></label>
            <label>Only devices on <input name="from" placeholder="any version" /></label>
            <label>Success threshold <input name="success" type="number" step="0.01" min="0" max="1" defaultValue="0.95" /></label>
            <label>Failure threshold <input name="failure" type="number" step="0.01" min="0" max="1" defaultValue="0.05" /></label>
            <label>Soak (s) <input name="soak" type="number" min="0" defaultValue="600" /></label>
            <label>Max per minute <input name="rate" type="number" min="1" defaultValue="1000" /></label>
            <label>On failure
              <select name="onFailure" defaultValue="rollback"><option>rollback</option><option>pause</option></select>
            </label>
            <button type="submit">Create rollout</button>
          </form>
          {msg && <div className="ok" data-testid="message">{msg}</div>}
          {err && <div className="error" data-testid="error">{err}</div>}
        </div>
        <div className="panel">
          <h3>Rollouts</h3>
          {rollouts.length === 0 && <p className="muted">No rollouts yet.</p>}
          {rollouts.map((r) => <RolloutCard key={r.id} rollout={live.get(r.id) ?? r} onChanged={load} />)}
        </div>
      </div>
    </div>
  );
}
