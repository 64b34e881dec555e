import { useEffect, useState } from "react";
import { Link, useSearchParams } from "react-router-dom";
import { call } from "./api";
import { ago } from "./logic";

type Device = { id: string; status: string; firmware: string | null; lastSeen: number | null; tags: Record<string, string> };

export function DevicesPage() {
  const [params, setParams] = useSearchParams();
  const [items, setItems] = useState<Device[]>([]);
  const [next, setNext] = useState<string | null>(null);
  const [err, setErr] = useState("");
  const [loading, setLoading] = useState(false);
  const query = (cursor?: string) => {
    const q: Record<string, string | string[] | undefined> = { limit: "100", cursor };
    for (const k of ["q", "status", "firmware"]) if (params.get(k)) q[k] = params.get(k)!;
    q.tag = (params.get("tag") ?? "").split(",").map((s) => s.trim()).filter(Boolean);
    return q;
  };
  const load = async (cursor?: string) => {
    setLoading(true);
    setErr("");
    try {
      const r = await call("get", "/api/v1/devices", { query: query(cursor) });
      setItems((prev) => (cursor ? [...prev, ...r.data.items] : r.data.items));
      setNext(r.data.next);
    } catch (e) {
      setErr((e as Error).message);
    }
    setLoading(false);
  };
  useEffect(() => {
    load();
  }, [params.toString()]);
  const set = (k: string, v: string) => {
    const p = new URLSearchParams(params);
    if (v) p.set(k, v);
    else p.delete(k);
    setParams(p, { replace: true });
  };
  return (
    <div className="panel">
      <div className="filters">
        <input placeholder="device id prefix" defaultValue={params.get("q") ?? ""} onChange={(e) => set("q", e.target.value)} aria-label="search" />
        <select value={params.get("status") ?? ""} onChange={(e) => set("status", e.target.value)} aria-label="status">
          <option value="">any status</option>
          <option value="online">online</option>
          <option value="offline">offline</option>
        </select>
        <input placeholder="firmware" defaultValue={params.get("firmware") ?? ""} onChange={(e) => set("firmware", e.target.value)} aria-label="firmware" />
        <input placeholder="tags, e.g. model:x1" defaultValue={params.get("tag") ?? ""} onChange={(e) => set("tag", e.target.value)} aria-label="tags" />
        {loading && <span className="muted">loading…</span>}
      </div>
      {err && <div className="error">{err}</div>}
      <table className="table dense" data-testid="devices-table">
        <thead><tr><th>id</th><th>status</th><th>firmware</th><th>last seen</th><th>tags</th></tr></thead>
        <tbody>
          {items.map((d) => (
            <tr key={d.id}>
              <td><Link to={`/devices/${encodeURIComponent(d.id)}`} className="mono">{d.id}</Link></td>
              <td><span className={`dot ${d.status}`} />{d.status}</td>
              <td>{d.firmware ?? "-"}</td>
              <td>{d.status === "online" ? "now" : ago(d.lastSeen)}</td>
              <td className="mono muted">{Object.entries(d.tags ?? {}).map(([k, v]) => `${k}:${v}`).join(" ")}</td>
            </tr>
          ))}
        </tbody>
      </table>
      <div className="muted">{items.length} shown{next && <> · <button className="link" onClick={() => load(next)}>load more</button></>}</div>
    </div>
  );
}
