// Follows /api/v1/live (run with node --experimental-websocket) while a
// rollout runs: prints one JSON line per frame's rollout and firmware
// sections, so the compose test can check the feed followed the rollout.
//   node --experimental-websocket live-follow.mjs URL TOKEN SECONDS > frames.jsonl
const [url, token, secs] = process.argv.slice(2);
const ws = new WebSocket(`${url.replace(/^http/, "ws")}/api/v1/live?access_token=${token}`);
let frames = 0;
ws.onmessage = (e) => {
  const f = JSON.parse(e.data);
  frames++;
  const out = { type: f.type, ts: f.ts };
  if ("rollouts" in f) out.rollouts = f.rollouts.map((r) => ({ id: r.id, state: r.state, waves: r.waves }));
  if ("firmware" in f) out.firmware = f.firmware;
  console.log(JSON.stringify(out));
};
ws.onerror = (e) => { console.error(`live feed error: ${e.message || e}`); process.exitCode = 1; };
setTimeout(() => { ws.close(); console.error(`${frames} frames`); process.exit(frames > 0 ? 0 : 1); }, Number(secs) * 1000);
