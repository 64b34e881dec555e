// A device's named shadows (AWS IoT Device Shadow; the classic shadow is
// the twin above): pick one, edit desired with the version check, delete.
import { useEffect, useState } from "react";
import { ApiError, call } from "./api";
import { mergePatch, parseDesired } from "./logic";

type Item = { name: string; version: number; updatedAt: number };

export function Shadows({ id }: { id: string }) {
  const [items, setItems] = useState<Item[]>([]);
  const [name, setName] = useState("");
  const [doc, setDoc] = useState<any>(null);
  const [desired, setDesired] = useState("{}");
  const [err, setErr] = useState("");
  const [msg, setMsg] = useState("");
  const list = async () => setItems((await call("get", "/api/v1/devices/{id}/shadows", { path: { id } })).data.items);
  const open = async (n: string) => {
    setErr("");
    setMsg("");
    setName(n);
    try {
      const r = await call("get", "/api/v1/devices/{id}/shadows/{name}", { path: { id, name: n } });
      setDoc(r.data);
      setDesired(JSON.stringify(r.data.state?.desired ?? {}, null, 2));
    } catch (e) {
      if (e instanceof ApiError && e.status === 404) {
        setDoc(null);
        setDesired("{}");
      } else setErr((e as Error).message);
    }
  };
  useEffect(() => {
    list().catch((e) => setErr((e as Error).message));
  }, [id]);
  const save = async () => {
    setErr("");
    setMsg("");
    const d = parseDesired(desired);
    if (typeof d === "string") return setErr(d);
    try {
      // what changed, as the twin's editor sends it: keys left out removed
      const body: Record<string, unknown> = { desired: mergePatch(doc?.state?.desired ?? {}, d) };
      if (doc) body.version = doc.version;
      const r = await call("patch", "/api/v1/devices/{id}/shadows/{name}", { path: { id, name }, body });
      setDoc(r.data);
      setMsg(`saved ${name}: version ${r.data.version}`);
      list();
    } catch (e) {
      if (e instanceof ApiError && e.status === 409) setErr("The shadow changed since you loaded it. Open it again, then edit.");
      else setErr((e as Error).message);
    }
  };
  const remove = async () => {
    try {
      await call("delete", "/api/v1/devices/{id}/shadows/{name}", { path: { id, name } });
      setMsg(`deleted ${name}`);
      setDoc(null);
      setName("");
      list();
    } catch (e) {
      setErr((e as Error).message);
    }
  };
  return (
    <div className="panel" data-testid="shadows">
      <div className="panel-head">
        <h3>Named shadows</h3>
        <span className="grow" />
        <input placeholder="name" value={name} onChange={(e) => setName(e.target.value)} aria-label="shadow name" />
        <button className="small" onClick={() => open(name)} disabled={!name}>open</button>
      </div>
      {items.length === 0 && <p className="muted">None. Devices make them through the AWS IoT shadow topics, or open a new name here.</p>}
      <table className="table dense">
        <tbody>
          {items.map((s) => (
            <tr key={s.name} onClick={() => open(s.name)} className="clickable"><td className="mono">{s.name}</td><td className="muted">version {s.version}</td></tr>
          ))}
        </tbody>
      </table>
      {name && (
        <>
          <div className="panel-head">
            <b className="mono">{name}</b>
            <span className="muted">{doc ? `version ${doc.version}` : "new"}</span>
            <span className="grow" />
            {doc && <button className="small" onClick={remove}>delete</button>}
            <button className="small primary" onClick={save}>save desired</button>
          </div>
          <textarea className="code" rows={6} value={desired} onChange={(e) => setDesired(e.target.value)} aria-label="shadow desired" />
          <h4>Reported</h4>
          <pre className="code">{JSON.stringify(doc?.state?.reported ?? {}, null, 2)}</pre>
          <h4>Delta</h4>
          <pre className="code">{JSON.stringify(doc?.state?.delta ?? {}, null, 2)}</pre>
        </>
      )}
      {msg && <div className="ok">{msg}</div>}
      {err && <div className="error">{err}</div>}
    </div>
  );
}
