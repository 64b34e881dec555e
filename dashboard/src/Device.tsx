import { useEffect, useState } from "react";
import { useParams } from "react-router-dom";
import { CartesianGrid, ComposedChart, Area, Line, ResponsiveContainer, Tooltip, XAxis, YAxis } from "recharts";
import { ApiError, call } from "./api";
import { ago, mergePatch, parseDesired, pickBucket, RANGES } from "./logic";
import { Shadows } from "./Shadows";

type Cmd = { id: string; name: string; status: string; createdAt: number };

function Telemetry({ id }: { id: string }) {
  const [range, setRange] = useState(RANGES[1].ms);
  const [series, setSeries] = useState<any[]>([]);
  const [bucket, setBucket] = useState("");
  const [err, setErr] = useState("");
  useEffect(() => {
    let stop = false;
    const load = async () => {
      const to = Date.now();
      const from = to - range;
      try {
        const r = await call("get", "/api/v1/devices/{id}/telemetry", { path: { id }, query: { from, to, bucket: "auto", limit: 20000 } });
        if (!stop) {
          setSeries(r.data.series);
          setBucket(r.data.bucket);
          setErr("");
        }
      } catch (e) {
        if (!stop) setErr((e as Error).message);
      }
    };
    load();
    const t = setInterval(load, range <= 3600_000 ? 10_000 : 60_000);
    return () => {
      stop = true;
      clearInterval(t);
    };
  }, [id, range]);
  const fmt = (t: number) => new Date(t).toLocaleString([], range > 86400_000 ? { month: "short", day: "numeric", hour: "2-digit" } : { hour: "2-digit", minute: "2-digit" });
  return (
    <div className="panel">
      <div className="panel-head">
        <h3>Telemetry</h3>
        <span className="muted" data-testid="tier">tier: {bucket || pickBucket(Date.now() - range, Date.now())}</span>
        <span className="grow" />
        {RANGES.map((r) => (
          <button key={r.ms} className={`small ${r.ms === range ? "active" : ""}`} onClick={() => setRange(r.ms)}>{r.label}</button>
        ))}
      </div>
      {err && <div className="error">{err}</div>}
      {series.length === 0 && <p className="muted">No telemetry in this range.</p>}
      <div className="charts">
        {series.map((s) => {
          const rows = s.points.map((p: any) => (Array.isArray(p) ? { t: p[0], v: p[1] } : { t: p.t, v: p.avg, band: [p.min, p.max] }));
          return (
            <div key={s.metric} className="chart">
              <div className="chart-title">{s.metric}</div>
              <ResponsiveContainer width="100%" height={140}>
                <ComposedChart data={rows} margin={{ top: 4, right: 8, bottom: 0, left: -10 }}>
                  <CartesianGrid strokeDasharray="3 3" className="grid" />
                  <XAxis dataKey="t" type="number" domain={["dataMin", "dataMax"]} tickFormatter={fmt} tick={{ fontSize: 10 }} minTickGap={40} />
                  <YAxis tick={{ fontSize: 10 }} domain={["auto", "auto"]} />
                  <Tooltip labelFormatter={(t) => new Date(Number(t)).toLocaleString()} />
                  {s.bucket !== "raw" && <Area dataKey="band" stroke="none" fill="var(--accent)" fillOpacity={0.15} isAnimationActive={false} />}
                  <Line dataKey="v" dot={false} stroke="var(--accent)" strokeWidth={1.5} isAnimationActive={false} name={s.bucket === "raw" ? "value" : "avg"} />
                </ComposedChart>
              </ResponsiveContainer>
            </div>
          );
        })}
      </div>
    </div>
  );
}

export function DevicePage() {
  const { id = "" } = useParams();
  const [device, setDevice] = useState<any>(null);
  const [twin, setTwin] = useState<any>(null);
  const [etag, setEtag] = useState<string | null>(null);
  const [desired, setDesired] = useState("");
  const [cmds, setCmds] = useState<Cmd[]>([]);
  const [msg, setMsg] = useState("");
  const [err, setErr] = useState("");
  const loadTwin = async () => {
    const t = await call("get", "/api/v1/devices/{id}/twin", { path: { id } });
    setTwin(t.data);
    setEtag(t.etag);
    setDesired(JSON.stringify(t.data.state?.desired ?? {}, null, 2));
  };
  const loadCmds = async () => setCmds((await call("get", "/api/v1/devices/{id}/commands", { path: { id }, query: { limit: 20 } })).data.items);
  useEffect(() => {
    (async () => {
      try {
        setDevice((await call("get", "/api/v1/devices/{id}", { path: { id } })).data);
        await loadTwin();
        await loadCmds();
      } catch (e) {
        setErr((e as Error).message);
      }
    })();
    const t = setInterval(() => loadCmds().catch(() => {}), 3000);
    return () => clearInterval(t);
  }, [id]);

  const save = async () => {
    setErr("");
    setMsg("");
    const d = parseDesired(desired);
    if (typeof d === "string") return setErr(d);
    try {
      const r = await call("patch", "/api/v1/devices/{id}/twin", { path: { id }, body: { desired: mergePatch(twin?.state?.desired ?? {}, d) }, headers: etag ? { "If-Match": etag } : {} });
      setTwin(r.data);
      setEtag(r.etag);
      setMsg(`saved: version ${r.data.version}`);
    } catch (e) {
      if (e instanceof ApiError && e.status === 412) setErr("The twin changed since you loaded it. Reload to see the new version, then edit again.");
      else setErr((e as Error).message);
    }
  };
  const send = async (ev: React.FormEvent<HTMLFormElement>) => {
    ev.preventDefault();
    setErr("");
    const f = new FormData(ev.currentTarget);
    const params = parseDesired(String(f.get("params") || "{}"));
    if (typeof params === "string") return setErr(`params: ${params}`);
    try {
      const r = await call("post", "/api/v1/devices/{id}/commands", { path: { id }, body: { name: f.get("name"), params, ttl: Number(f.get("ttl")) } });
      setMsg(`command ${r.data.name} ${r.data.status}`);
      loadCmds();
    } catch (e) {
      setErr((e as Error).message);
    }
  };
  return (
    <div>
      <div className="panel">
        <div className="panel-head">
          <h2 className="mono">{id}</h2>
          {device && <span className={`state state-${device.status}`}>{device.status}</span>}
          {device && <span className="muted">firmware {device.firmware ?? "-"} · last seen {device.status === "online" ? "now" : ago(device.lastSeen)} · tags {JSON.stringify(device.tags)}</span>}
        </div>
        {msg && <div className="ok">{msg}</div>}
        {err && <div className="error">{err}</div>}
      </div>
      <div className="cols">
        <div className="col grow">
          <div className="panel">
            <div className="panel-head">
              <h3>Desired</h3>
              <span className="muted">version {twin?.version ?? "-"}</span>
              <span className="grow" />
              <button className="small" onClick={() => loadTwin()}>reload</button>
              <button className="small primary" onClick={save}>save</button>
            </div>
            <textarea className="code" rows={8} value={desired} onChange={(e) => setDesired(e.target.value)} aria-label="desired" />
          </div>
          <div className="panel">
            <h3>Reported</h3>
            <pre className="code">{JSON.stringify(twin?.state?.reported ?? {}, null, 2)}</pre>
            <h3>Delta</h3>
            <pre className="code">{JSON.stringify(twin?.state?.delta ?? {}, null, 2)}</pre>
          </div>
          <Shadows id={id} />
        </div>
        <div className="col" style={{ width: 420 }}>
          <div className="panel">
            <h3>Commands</h3>
            <form onSubmit={send} className="form inline">
              <input name="name" placeholder="reboot" required aria-label="command name" />
              <input name="params" placeholder='{"delay":1}' aria-label="params" />
              <input name="ttl" type="number" defaultValue={3600} title="seconds to wait for the device" aria-label="ttl" />
              <button type="submit">send</button>
            </form>
            <table className="table dense">
              <tbody>
                {cmds.map((c) => (
                  <tr key={c.id}><td>{c.name}</td><td><span className={`state state-${c.status}`}>{c.status}</span></td><td className="muted">{ago(c.createdAt)}</td></tr>
                ))}
              </tbody>
            </table>
          </div>
        </div>
      </div>
      <Telemetry id={id} />
    </div>
  );
}
