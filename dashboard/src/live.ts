import { useEffect, useState } from "react";
import { liveUrl } from "./api";
import { applyFrame, Summary } from "./logic";

export type LiveState = { summary: Summary | null; connected: boolean; frames: number };

// One WebSocket to /api/v1/live for the whole app; reconnects with backoff.
// The summary frame arrives at once and changes after: no polling.
export function useLive(token: string): LiveState {
  const [state, setState] = useState<LiveState>({ summary: null, connected: false, frames: 0 });
  useEffect(() => {
    if (!token) return;
    let ws: WebSocket | null = null;
    let closed = false;
    let delay = 500;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const open = () => {
      ws = new WebSocket(liveUrl());
      ws.onopen = () => {
        delay = 500;
        setState((s) => ({ ...s, connected: true }));
      };
      ws.onmessage = (ev) => {
        let frame: unknown;
        try {
          frame = JSON.parse(ev.data);
        } catch {
          return;
        }
        setState((s) => ({ summary: applyFrame(s.summary, frame), connected: true, frames: s.frames + 1 }));
      };
      ws.onclose = () => {
        setState((s) => ({ ...s, connected: false }));
        if (!closed) timer = setTimeout(open, (delay = Math.min(delay * 2, 10_000)));
      };
    };
    open();
    return () => {
      closed = true;
      if (timer) clearTimeout(timer);
      ws?.close();
    };
  }, [token]);
  return state;
}
