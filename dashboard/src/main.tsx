import { StrictMode, useEffect, useState } from "react";
import { createRoot } from "react-dom/client";
import { BrowserRouter, NavLink, Route, Routes } from "react-router-dom";
import { call, getToken, setToken } from "./api";
import { useLive } from "./live";
import { Overview } from "./Overview";
import { DevicesPage } from "./Devices";
import { DevicePage } from "./Device";
import { FirmwarePage } from "./Rollouts";
import { JobsPage } from "./Jobs";
import "./styles.css";

// A token may arrive in the URL (#token=… as local mode prints it); it is
// moved to localStorage and taken out of the address bar.
function tokenFromHash() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    setToken(decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function Login({ onToken }: { onToken: (t: string) => void }) {
  const [err, setErr] = useState("");
  return (
    <div className="login panel">
      <h2>Motehub</h2>
      <p className="muted">Paste an operator token (<code>motectl token create NAME</code> makes one).</p>
      <form
        onSubmit={async (e) => {
          e.preventDefault();
          const t = String(new FormData(e.currentTarget).get("token")).trim();
          setToken(t);
          try {
            await call("get", "/api/v1/fleet/summary");
            onToken(t);
          } catch (x) {
            setToken("");
            setErr((x as Error).message);
          }
        }}
      >
        <input name="token" placeholder="mht_…" autoFocus aria-label="token" />
        <button type="submit">Sign in</button>
      </form>
      {err && <div className="error">{err}</div>}
    </div>
  );
}

function App() {
  const [token, setTok] = useState(getToken());
  const [theme, setTheme] = useState(localStorage.getItem("motehub.theme") ?? (matchMedia("(prefers-color-scheme: light)").matches ? "light" : "dark"));
  useEffect(() => {
    document.documentElement.dataset.theme = theme;
    localStorage.setItem("motehub.theme", theme);
  }, [theme]);
  const live = useLive(token);
  if (!token) return <Login onToken={setTok} />;
  return (
    <BrowserRouter>
      <header className="top">
        <span className="brand">motehub</span>
        <NavLink to="/" end>Overview</NavLink>
        <NavLink to="/devices">Devices</NavLink>
        <NavLink to="/firmware">Firmware &amp; rollouts</NavLink>
        <NavLink to="/jobs">Jobs</NavLink>
        <span className="grow" />
        <span className={`live ${live.connected ? "on" : "off"}`} data-testid="live-status">{live.connected ? "live" : "reconnecting"}</span>
        <button className="small" onClick={() => setTheme(theme === "dark" ? "light" : "dark")} aria-label="theme">{theme === "dark" ? "☀ light" : "☾ dark"}</button>
        <button className="small" onClick={() => { setToken(""); setTok(""); }}>sign out</button>
      </header>
      <main>
        <Routes>
          <Route path="/" element={<Overview summary={live.summary} connected={live.connected} />} />
          <Route path="/devices" element={<DevicesPage />} />
          <Route path="/devices/:id" element={<DevicePage />} />
          <Route path="/firmware" element={<FirmwarePage liveRollouts={live.summary?.rollouts ?? []} />} />
          <Route path="/jobs" element={<JobsPage liveRollouts={live.summary?.rollouts ?? []} />} />
        </Routes>
      </main>
    </BrowserRouter>
  );
}

tokenFromHash();
createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <App />
  </StrictMode>,
);
