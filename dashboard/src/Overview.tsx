import { Area, AreaChart, Bar, BarChart, CartesianGrid, ResponsiveContainer, Tooltip, XAxis, YAxis } from "recharts";
import { Link } from "react-router-dom";
import { formatCount, formatRate, Summary } from "./logic";
import { WorldMap } from "./WorldMap";
import { RolloutCard } from "./Rollouts";

function Counter({ label, value, tone, testid }: { label: string; value: string; tone?: string; testid: string }) {
  return (
    <div className={`counter ${tone ?? ""}`}>
      <div className="counter-value" data-testid={testid}>{value}</div>
      <div className="counter-label">{label}</div>
    </div>
  );
}

function Buckets({ title, data }: { title: string; data: Record<string, number> }) {
  const rows = Object.entries(data ?? {}).map(([k, v]) => ({ k, v }));
  return (
    <div className="panel small">
      <h3>{title}</h3>
      <ResponsiveContainer width="100%" height={130}>
        <BarChart data={rows} margin={{ top: 4, right: 8, bottom: 0, left: -18 }}>
          <CartesianGrid strokeDasharray="3 3" className="grid" />
          <XAxis dataKey="k" tick={{ fontSize: 11 }} />
          <YAxis tick={{ fontSize: 11 }} allowDecimals={false} />
          <Tooltip />
          <Bar dataKey="v" name="devices" className="bar" fill="var(--accent)" isAnimationActive={false} />
        </BarChart>
      </ResponsiveContainer>
    </div>
  );
}

export function Overview({ summary, connected }: { summary: Summary | null; connected: boolean }) {
  if (!summary) return <div className="panel">Waiting for the live feed{connected ? "…" : " (connecting)"}</div>;
  const d = summary.devices;
  const history = summary.history.map(([t, on, off]) => ({
    t: new Date(t).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }),
    online: on,
    offline: off,
  }));
  const firmware = Object.entries(summary.firmware)
    .map(([version, count]) => ({ version, count }))
    .sort((a, b) => b.count - a.count);
  return (
    <div className="overview">
      <div className="counters">
        <Counter label="devices" value={formatCount(d.total)} testid="count-total" />
        <Counter label="online" value={formatCount(d.online)} tone="good" testid="count-online" />
        <Counter label="offline" value={formatCount(d.offline)} tone={d.offline ? "warn" : ""} testid="count-offline" />
        <Counter label="messages in" value={formatRate(summary.rates.in)} testid="rate-in" />
        <Counter label="messages out" value={formatRate(summary.rates.out)} testid="rate-out" />
        <Counter label="active rollouts" value={String(summary.rollouts.length)} testid="count-rollouts" />
      </div>
      <div className="row">
        <div className="panel grow">
          <h3>Online / offline, last hour</h3>
          <ResponsiveContainer width="100%" height={200}>
            <AreaChart data={history} margin={{ top: 4, right: 8, bottom: 0, left: -10 }}>
              <CartesianGrid strokeDasharray="3 3" className="grid" />
              <XAxis dataKey="t" tick={{ fontSize: 11 }} minTickGap={30} />
              <YAxis tick={{ fontSize: 11 }} allowDecimals={false} />
              <Tooltip />
              <Area type="stepAfter" dataKey="online" stackId="1" stroke="var(--good)" fill="var(--good)" fillOpacity={0.35} isAnimationActive={false} />
              <Area type="stepAfter" dataKey="offline" stackId="1" stroke="var(--warn)" fill="var(--warn)" fillOpacity={0.35} isAnimationActive={false} />
            </AreaChart>
          </ResponsiveContainer>
        </div>
        <div className="panel" style={{ width: 340 }}>
          <h3>Firmware</h3>
          <table className="table" data-testid="firmware-table">
            <tbody>
              {firmware.map((f) => (
                <tr key={f.version}>
                  <td><Link to={`/devices?firmware=${encodeURIComponent(f.version)}`}>{f.version}</Link></td>
                  <td className="num">{formatCount(f.count)}</td>
                  <td className="bar-cell"><div className="hbar" style={{ width: `${(100 * f.count) / Math.max(1, d.total)}%` }} /></td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </div>
      <div className="row">
        <Buckets title="Battery %" data={summary.health.battery} />
        <Buckets title="Signal (rssi)" data={summary.health.rssi} />
        <Buckets title="Last seen" data={summary.health.lastSeen} />
      </div>
      <div className="row">
        <div className="panel grow">
          <h3>Where the devices are</h3>
          <WorldMap cells={summary.geo.cells} cellDegrees={summary.geo.cellDegrees} />
        </div>
        <div className="panel" style={{ width: 420 }}>
          <h3>Active rollouts</h3>
          {summary.rollouts.length === 0 && <p className="muted">None. <Link to="/firmware">Start one</Link>.</p>}
          {summary.rollouts.map((r) => <RolloutCard key={r.id} rollout={r} />)}
        </div>
      </div>
    </div>
  );
}
