// Jobs: rollouts of a JSON document (AWS IoT Jobs, docs/aws-migration.md),
// with the same waves, thresholds and controls as firmware rollouts.
import { useEffect, useState } from "react";
import { ApiError, call } from "./api";
import { parseDesired, Rollout, rolloutOptions } from "./logic";
import { RolloutCard } from "./Rollouts";

export function JobsPage({ liveRollouts }: { liveRollouts: Rollout[] }) {
  const [jobs, setJobs] = useState<Rollout[]>([]);
  const [msg, setMsg] = useState("");
  const [err, setErr] = useState("");
  const load = async () => {
    try {
      setJobs((await call("get", "/api/v1/jobs", { query: { limit: 50 } })).data.items);
    } catch (e) {
      setErr((e as Error).message);
    }
  };
  const liveKey = JSON.stringify(liveRollouts.map((r) => [r.id, r.state, r.waves?.map((w) => w.succeeded + w.failed)]));
  useEffect(() => {
    load();
  }, [liveKey]);

  const create = async (ev: React.FormEvent<HTMLFormElement>) => {
    ev.preventDefault();
    setErr("");
    setMsg("");
    const f = new FormData(ev.currentTarget);
    const document = parseDesired(String(f.get("document")));
    if (typeof document === "string") return setErr(`document: ${document}`);
    const options = rolloutOptions(f);
    if (typeof options === "string") return setErr(options);
    const spec = { document, ...options, jobTimeoutSeconds: Number(f.get("timeout")) };
    try {
      const r = await call("post", "/api/v1/jobs", { body: spec });
      setMsg(`job ${r.data.id.slice(0, 8)} created`);
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
          <h3>New job</h3>
          <form onSubmit={create} className="form" data-testid="job-form">
            <label>Document (JSON)
              <textarea className="code" name="document" rows={6} defaultValue={'{\n  "operation": "reboot"\n}'} aria-label="document" />
            </label>
            <label>Waves (%) <input name="waves" defaultValue="10, 100" /></label>
            <label>Target tags <input name="tags" placeholder="model:x1, site:lab" /></label>
            <label>Only devices on <input name="from" placeholder="any version" /></label>
            <label>Success threshold <input name="success" type="number" step="0.01" min="0" max="1" defaultValue="0.95" /></label>
            <label>Failure threshold <input name="failure" type="number" step="0.01" min="0" max="1" defaultValue="0.05" /></label>
            <label>Soak (s) <input name="soak" type="number" min="0" defaultValue="60" /></label>
            <label>Max per minute <input name="rate" type="number" min="1" defaultValue="1000" /></label>
            <label>Timeout (s) <input name="timeout" type="number" min="1" defaultValue="3600" /></label>
            <button type="submit">Create job</button>
          </form>
          {msg && <div className="ok" data-testid="message">{msg}</div>}
          {err && <div className="error" data-testid="error">{err}</div>}
        </div>
      </div>
      <div className="col grow">
        <div className="panel">
          <h3>Jobs</h3>
          <p className="muted">A job runs a JSON document on the devices its target picks; devices built on the AWS IoT SDKs take it through the Jobs API. On failure a job pauses.</p>
          {jobs.length === 0 && <p className="muted">No jobs yet.</p>}
          {jobs.map((r) => <RolloutCard key={r.id} rollout={live.get(r.id) ?? r} onChanged={load} />)}
        </div>
      </div>
    </div>
  );
}
