import { geoEqualEarth, geoPath } from "d3-geo";
import { feature } from "topojson-client";
import { useMemo } from "react";
import world from "world-atlas/countries-110m.json";
import { Cell, cellOpacity, formatCount } from "./logic";

const W = 720;
const H = 360;

// Device density on a world map drawn from geometry bundled with the app
// (Natural Earth 1:110m through world-atlas); no map tiles are fetched.
export function WorldMap({ cells, cellDegrees }: { cells: Cell[]; cellDegrees: number }) {
  const { path, land } = useMemo(() => {
    const topo = world as any;
    const land = feature(topo, topo.objects.countries) as any;
    const projection = geoEqualEarth().fitSize([W, H], { type: "Sphere" } as any);
    return { path: geoPath(projection), land };
  }, []);
  const max = cells.reduce((m, c) => Math.max(m, c.count), 0);
  return (
    <svg viewBox={`0 0 ${W} ${H}`} className="map" role="img" aria-label="device density map">
      <path d={path({ type: "Sphere" } as any) ?? ""} className="map-sphere" />
      {land.features.map((f: any, i: number) => (
        <path key={i} d={path(f) ?? ""} className="map-land" />
      ))}
      {cells.map((c) => {
        const d = cellDegrees;
        // clockwise, so d3-geo takes the small square, not the rest of the sphere
        const square = { type: "Polygon", coordinates: [[[c.lon, c.lat], [c.lon, c.lat + d], [c.lon + d, c.lat + d], [c.lon + d, c.lat], [c.lon, c.lat]]] };
        return (
          <path key={`${c.lat},${c.lon}`} d={path(square as any) ?? ""} className="map-cell" fillOpacity={cellOpacity(c.count, max)}>
            <title>{`${formatCount(c.count)} devices at ${c.lat.toFixed(0)}…${(c.lat + d).toFixed(0)}°, ${c.lon.toFixed(0)}…${(c.lon + d).toFixed(0)}°`}</title>
          </path>
        );
      })}
    </svg>
  );
}
