import { describe, expect, it } from "vitest";
import {
  applyFrame, cellOpacity, cellRadius, controlsFor, formatRate, HISTORY_MAX, mergePatch, parseDesired,
  parseTags, parseWaves, pickBucket, waveShares, healthRows,
} from "../src/logic";

const summary = {
  type: "summary", ts: 1,
  devices: { total: 10, online: 8, offline: 2 }, firmware: { "1.0": 10 },
  health: { battery: { "<20": 1 } }, rates: { in: 5, out: 1 }, rollouts: [],
  geo: { cellDegrees: 1, cells: [] }, history: [[1, 8, 2]],
};

describe("applyFrame", () => {
  it("takes a summary whole", () => {
    const s = applyFrame(null, summary)!;
    expect(s.devices.online).toBe(8);
    expect((s as any).type).toBeUndefined();
  });
  it("replaces only the sections a change carries and appends history", () => {
    const s = applyFrame(applyFrame(null, summary), {
      type: "changes", ts: 2, devices: { total: 10, online: 7, offline: 3 }, history: [[2, 7, 3]],
    })!;
    expect(s.devices.offline).toBe(3);
    expect(s.firmware).toEqual({ "1.0": 10 });
    expect(s.history).toEqual([[1, 8, 2], [2, 7, 3]]);
    expect(s.ts).toBe(2);
  });
  it("ignores changes before any summary and junk", () => {
    expect(applyFrame(null, { type: "changes", devices: {} })).toBeNull();
    const s = applyFrame(null, summary);
    expect(applyFrame(s, "nonsense")).toBe(s);
  });
  it("keeps at most an hour of history", () => {
    let s = applyFrame(null, summary);
    for (let i = 0; i < HISTORY_MAX + 50; i++) s = applyFrame(s, { type: "changes", history: [[i + 10, 1, 1]] });
    expect(s!.history.length).toBe(HISTORY_MAX);
    expect(s!.history.at(-1)![0]).toBe(HISTORY_MAX + 59);
  });
});

describe("pickBucket", () => {
  it("matches the server's auto rule", () => {
    expect(pickBucket(0, 3600_000)).toBe("raw");
    expect(pickBucket(0, 3600_001)).toBe("1m");
    expect(pickBucket(0, 48 * 3600_000)).toBe("1m");
    expect(pickBucket(0, 7 * 86400_000)).toBe("1h");
  });
});

describe("forms", () => {
  it("parses waves that rise to 100", () => {
    expect(parseWaves("1, 10, 100")).toEqual([{ percent: 1 }, { percent: 10 }, { percent: 100 }]);
    expect(parseWaves("10, 5, 100")).toMatch(/larger/);
    expect(parseWaves("1, 50")).toMatch(/100/);
    expect(parseWaves("x")).toMatch(/percentage/);
    expect(parseWaves("")).toMatch(/e.g./);
  });
  it("parses tags", () => {
    expect(parseTags("model:x1, site:lab")).toEqual({ model: "x1", site: "lab" });
    expect(parseTags("")).toEqual({});
    expect(parseTags("model")).toMatch(/key:value/);
  });
  it("parses desired as a JSON object only", () => {
    expect(parseDesired('{"a":1}')).toEqual({ a: 1 });
    expect(parseDesired("[1]")).toMatch(/object/);
    expect(parseDesired("{")).toMatch(/not JSON/);
  });
  it("sends only what changed as a merge patch", () => {
    expect(mergePatch({ a: 1, b: 2, c: { x: 1, y: 2 } }, { a: 1, c: { x: 1, y: 3 }, d: true }))
      .toEqual({ b: null, c: { y: 3 }, d: true });
    expect(mergePatch({}, {})).toEqual({});
  });
});

describe("display", () => {
  it("formats rates", () => {
    expect(formatRate(2.345)).toBe("2.3/s");
    expect(formatRate(250)).toBe("250/s");
    expect(formatRate(12500)).toBe("12.5k/s");
  });
  it("shares of a wave", () => {
    const s = waveShares({ index: 0, percent: 10, targeted: 20, sent: 20, inProgress: 2, succeeded: 15, failed: 2, timedOut: 1, state: "running" });
    expect(s).toEqual({ succeeded: 0.75, failed: 0.15, inProgress: 0.1, observing: 0 });
  });
  it("offers only the controls the API accepts", () => {
    expect(controlsFor("running")).toContain("pause");
    expect(controlsFor("paused")).toContain("resume");
    expect(controlsFor("rolled_back")).toEqual([]);
  });
  it("sizes map circles by area", () => {
    expect(cellRadius(100, 100)).toBe(14);
    expect(cellRadius(25, 100)).toBe(7);
    expect(cellRadius(0, 100)).toBe(0);
  });
  it("shades map cells by density", () => {
    expect(cellOpacity(100, 100)).toBe(1);
    expect(cellOpacity(25, 100)).toBeCloseTo(0.625);
    expect(cellOpacity(0, 100)).toBe(0);
  });
});

describe("health gate", () => {
  it("shows each wave's signals against control, the worse marked", () => {
    const rows = healthRows({
      at: 1, worse: true, signals: [
        { wave: 1, signal: "disconnects", metric: null, updated: 12, updatedDevices: 4, control: 0, controlDevices: 36, judged: true, worse: true, detail: "" },
        { wave: 1, signal: "metric", metric: "temperature", updated: 31.3999, updatedDevices: 4, control: 0, controlDevices: 0, judged: true, worse: false, detail: "" },
      ],
    });
    expect(rows.map((r) => [r.name, r.updated, r.control, r.worse])).toEqual([
      ["disconnects", "12 (4)", "0 (36)", true],
      ["temperature", "31.4 (4)", "–", false],
    ]);
    expect(healthRows(null)).toEqual([]);
  });
  it("counts devices under observation apart", () => {
    const s = waveShares({ index: 0, percent: 10, targeted: 10, sent: 10, inProgress: 0, succeeded: 4, failed: 0, timedOut: 0, state: "observing", observing: 6 });
    expect(s.observing).toBeCloseTo(0.6);
    expect(s.succeeded).toBeCloseTo(0.4);
  });
});
