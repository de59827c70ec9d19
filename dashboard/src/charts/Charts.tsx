// D3 charts drawn by React: D3 computes scales, paths and axes, React owns the DOM elements.
// Each chart is an <svg role="img"> named by its <title> and described by its <desc>.

import Box from '@mui/material/Box';
import Typography from '@mui/material/Typography';
import { axisBottom, axisLeft, axisRight, scaleLinear, scaleTime, select, timeFormat } from 'd3';
import { useEffect, useId, useRef, type ReactNode } from 'react';

import { useWidth } from '../hooks';
import type { Reason } from '../types';
import {
  columnBars,
  divergingBars,
  horizontalBars,
  linePath,
  type Margin,
  paddedDomain,
  type XY,
} from './geometry';

export const COLORS = ['#1565c0', '#c62828', '#2e7d32', '#6a1b9a', '#ef6c00', '#00838f'];
const GRID = '#9e9e9e';

type AnyScale = ((value: number) => number) & { ticks?: unknown };

interface AxisProps {
  scale: ReturnType<typeof scaleLinear<number, number>> | ReturnType<typeof scaleTime<number, number>>;
  orient: 'bottom' | 'left' | 'right';
  ticks?: number;
  format?: (value: number) => string;
  transform?: string;
}

/** An axis drawn by d3-axis into its own <g>, redrawn when the scale changes. */
function Axis({ scale, orient, ticks = 5, format, transform }: AxisProps) {
  const ref = useRef<SVGGElement | null>(null);
  useEffect(() => {
    if (!ref.current) return;
    const make = orient === 'bottom' ? axisBottom : orient === 'left' ? axisLeft : axisRight;
    // d3's axis generics do not line up with a union of scale types; both are continuous.
    const axis = make(scale as unknown as Parameters<typeof axisBottom>[0]).ticks(ticks);
    if (format) axis.tickFormat((d) => format(Number(d)));
    select(ref.current).call(axis as never);
    select(ref.current).selectAll('text').attr('font-size', 11);
  }, [scale, orient, ticks, format]);
  return <g ref={ref} transform={transform} aria-hidden="true" />;
}

interface FrameProps {
  title: string;
  description: string;
  height: number;
  margin: Margin;
  testId: string;
  children: (width: number, height: number) => ReactNode;
  legend?: { name: string; color: string; dashed?: boolean }[];
}

/** A titled figure whose SVG fills its container's width. */
function ChartFrame({ title, description, height, margin, testId, children, legend }: FrameProps) {
  const [ref, width] = useWidth<HTMLDivElement>();
  const id = useId();
  const inner = Math.max(40, width - margin.left - margin.right);
  const innerHeight = Math.max(40, height - margin.top - margin.bottom);
  return (
    <Box component="figure" sx={{ m: 0, width: '100%' }} data-testid={testId}>
      <Typography component="figcaption" variant="subtitle2" sx={{ mb: 0.5 }}>
        {title}
      </Typography>
      <Box ref={ref} sx={{ width: '100%' }}>
        <svg
          width={width}
          height={height}
          role="img"
          aria-labelledby={`${id}-title`}
          aria-describedby={`${id}-desc`}
          style={{ display: 'block', overflow: 'visible' }}
        >
          <title id={`${id}-title`}>{title}</title>
          <desc id={`${id}-desc`}>{description}</desc>
          <g transform={`translate(${margin.left},${margin.top})`}>{children(inner, innerHeight)}</g>
        </svg>
      </Box>
      {legend && legend.length > 0 && (
        <Box component="ul" sx={{ display: 'flex', flexWrap: 'wrap', gap: 2, listStyle: 'none', p: 0, m: 0, mt: 0.5 }}>
          {legend.map((item) => (
            <Box component="li" key={item.name} sx={{ display: 'flex', alignItems: 'center', gap: 0.75 }}>
              <Box
                component="span"
                aria-hidden="true"
                sx={{
                  width: 16,
                  height: 0,
                  borderTop: `3px ${item.dashed ? 'dashed' : 'solid'} ${item.color}`,
                }}
              />
              <Typography variant="caption">{item.name}</Typography>
            </Box>
          ))}
        </Box>
      )}
    </Box>
  );
}

export interface Series {
  name: string;
  points: XY[];
  color?: string;
  dashed?: boolean;
  markers?: boolean;
  className?: string;
}

interface LineChartProps {
  title: string;
  description: string;
  series: Series[];
  testId: string;
  xLabel: string;
  yLabel: string;
  xDomain?: [number, number];
  yDomain?: [number, number];
  time?: boolean;
  diagonal?: boolean;
  height?: number;
  xFormat?: (value: number) => string;
  yFormat?: (value: number) => string;
  rules?: { y: number; label: string }[];
  // Half the x range around a single point (time charts: milliseconds).
  flatX?: number;
  // Most x ticks to draw (default: one per ~90 px).
  xTicks?: number;
}

const shortTime = timeFormat('%b %d %H:%M');

/** Lines (and optional markers) over linear or time x axes; ``diagonal`` draws y = x. */
export function LineChart(props: LineChartProps) {
  const { series, height = 260, time = false } = props;
  const margin: Margin = { top: 10, right: 16, bottom: 44, left: 52 };
  const xs = series.flatMap((s) => s.points.map((p) => p.x));
  const ys = series.flatMap((s) => s.points.map((p) => p.y));
  const now = Date.now();
  const xDomain =
    props.xDomain ?? paddedDomain(xs, time ? [now - 60_000, now] : [0, 1], 0, props.flatX ?? (time ? 60_000 : undefined));
  const yDomain = props.yDomain ?? paddedDomain([...ys, ...(props.rules ?? []).map((r) => r.y)], [0, 1]);
  return (
    <ChartFrame
      title={props.title}
      description={props.description}
      height={height}
      margin={margin}
      testId={props.testId}
      legend={series.length > 1 ? series.map((s, i) => ({ name: s.name, color: s.color ?? COLORS[i % COLORS.length] ?? GRID, dashed: s.dashed })) : undefined}
    >
      {(width, innerHeight) => {
        const x = time
          ? scaleTime<number, number>().domain(xDomain.map((v) => new Date(v))).range([0, width])
          : scaleLinear<number, number>().domain(xDomain).range([0, width]);
        const y = scaleLinear<number, number>().domain(yDomain).range([innerHeight, 0]);
        const xAt = (v: number) => (x as unknown as AnyScale)(time ? (new Date(v) as unknown as number) : v);
        const ticks = Math.min(props.xTicks ?? Infinity, Math.max(2, Math.floor(width / 90)));
        return (
          <>
            {props.diagonal && (
              <line
                x1={xAt(xDomain[0])}
                y1={y(xDomain[0])}
                x2={xAt(xDomain[1])}
                y2={y(xDomain[1])}
                stroke={GRID}
                strokeDasharray="4 4"
              />
            )}
            {(props.rules ?? []).map((rule) => (
              <g key={rule.label}>
                <line x1={0} x2={width} y1={y(rule.y)} y2={y(rule.y)} stroke={GRID} strokeDasharray="2 4" />
                <text x={width - 4} y={y(rule.y) - 4} textAnchor="end" fontSize={11} fill="#424242">
                  {rule.label}
                </text>
              </g>
            ))}
            {series.map((s, index) => {
              const color = s.color ?? COLORS[index % COLORS.length] ?? GRID;
              return (
                <g key={s.name} className={s.className ?? 'series'}>
                  <path
                    className="line"
                    d={linePath(s.points, xDomain, yDomain, width, innerHeight)}
                    fill="none"
                    stroke={color}
                    strokeWidth={2}
                    strokeDasharray={s.dashed ? '6 4' : undefined}
                  />
                  {s.markers &&
                    s.points.map((p, i) => (
                      <circle key={i} className="point" cx={xAt(p.x)} cy={y(p.y)} r={3.5} fill={color} />
                    ))}
                </g>
              );
            })}
            <Axis
              scale={x}
              orient="bottom"
              ticks={ticks}
              transform={`translate(0,${innerHeight})`}
              format={props.xFormat ?? (time ? (v) => shortTime(new Date(v)) : undefined)}
            />
            <Axis scale={y} orient="left" format={props.yFormat} />
            <text x={width / 2} y={innerHeight + 36} textAnchor="middle" fontSize={12} fill="#424242">
              {props.xLabel}
            </text>
            <text
              transform={`translate(${-40},${innerHeight / 2}) rotate(-90)`}
              textAnchor="middle"
              fontSize={12}
              fill="#424242"
            >
              {props.yLabel}
            </text>
          </>
        );
      }}
    </ChartFrame>
  );
}

function labelWidth(labels: string[], width: number): number {
  const longest = Math.max(0, ...labels.map((l) => l.length));
  return Math.min(Math.max(60, longest * 7 + 8), Math.floor(width * 0.45));
}

interface BarChartProps {
  title: string;
  description: string;
  entries: [string, number][];
  testId: string;
  format?: (value: number) => string;
  color?: string;
}

/** Horizontal bars, largest first (global feature importance). */
export function BarChart({ title, description, entries, testId, format = (v) => v.toFixed(3), color = COLORS[0] }: BarChartProps) {
  const rowHeight = 24;
  const shown = Math.min(entries.length, 20);
  const height = shown * rowHeight + 24;
  const [ref, width] = useWidth<HTMLDivElement>();
  const left = labelWidth(entries.map((e) => e[0]), width);
  return (
    <Box ref={ref} sx={{ width: '100%' }}>
      <ChartFrame title={title} description={description} height={height} margin={{ top: 4, right: 56, bottom: 20, left }} testId={testId}>
        {(inner) => (
          <>
            {horizontalBars(entries, inner, rowHeight).map((bar) => (
              <g key={bar.key} className="bar-row">
                <text x={-6} y={bar.y + bar.height / 2} dy="0.35em" textAnchor="end" fontSize={12} fill="#212121">
                  {bar.key}
                </text>
                <rect className="bar" x={bar.x} y={bar.y} width={bar.width} height={bar.height} fill={color} data-value={bar.value} />
                <text x={bar.width + 4} y={bar.y + bar.height / 2} dy="0.35em" fontSize={11} fill="#424242">
                  {format(bar.value)}
                </text>
              </g>
            ))}
          </>
        )}
      </ChartFrame>
    </Box>
  );
}

interface DivergingProps {
  title: string;
  description: string;
  reasons: Reason[];
  testId: string;
}

/** Each feature's push in log-odds: right (red) toward churn, left (blue) toward staying. */
export function DivergingBarChart({ title, description, reasons, testId }: DivergingProps) {
  const rowHeight = 24;
  const shown = Math.min(reasons.length, 20);
  const height = shown * rowHeight + 30;
  const [ref, width] = useWidth<HTMLDivElement>();
  const left = labelWidth(reasons.map((r) => r.feature), width);
  return (
    <Box ref={ref} sx={{ width: '100%' }}>
      <ChartFrame
        title={title}
        description={description}
        height={height}
        margin={{ top: 4, right: 16, bottom: 26, left }}
        testId={testId}
        legend={[
          { name: 'toward churn', color: COLORS[1] ?? GRID },
          { name: 'toward staying', color: COLORS[0] ?? GRID },
        ]}
      >
        {(inner, innerHeight) => {
          const layout = divergingBars(reasons, inner, rowHeight);
          const x = scaleLinear<number, number>().domain(layout.domain).range([0, inner]);
          return (
            <>
              {layout.bars.map((bar) => (
                <g key={bar.key} className="bar-row">
                  <text x={-6} y={bar.y + bar.height / 2} dy="0.35em" textAnchor="end" fontSize={12} fill="#212121">
                    {bar.key}
                  </text>
                  <rect
                    className="bar"
                    x={bar.x}
                    y={bar.y}
                    width={Math.max(bar.width, 1)}
                    height={bar.height}
                    fill={bar.positive ? COLORS[1] : COLORS[0]}
                    data-value={bar.value}
                  />
                </g>
              ))}
              <line x1={layout.zero} x2={layout.zero} y1={0} y2={innerHeight} stroke="#616161" />
              <Axis scale={x} orient="bottom" ticks={Math.max(2, Math.floor(inner / 80))} transform={`translate(0,${innerHeight})`} format={(v) => v.toFixed(2)} />
            </>
          );
        }}
      </ChartFrame>
    </Box>
  );
}

interface LiftProps {
  title: string;
  description: string;
  deciles: { decile: number; lift: number | null; capture: number | null }[];
  testId: string;
}

/** Lift per decile (bars, left axis) and cumulative capture (line, right axis, 0-100%). */
export function LiftChart({ title, description, deciles, testId }: LiftProps) {
  const margin: Margin = { top: 10, right: 48, bottom: 44, left: 44 };
  const lifts = deciles.map((d) => d.lift ?? 0);
  const yMax = Math.max(1.2, ...lifts) * 1.1;
  return (
    <ChartFrame
      title={title}
      description={description}
      height={260}
      margin={margin}
      testId={testId}
      legend={[
        { name: 'lift', color: COLORS[0] ?? GRID },
        { name: 'cumulative capture', color: COLORS[4] ?? GRID },
      ]}
    >
      {(width, height) => {
        const bars = columnBars(
          deciles.map((d) => ({ key: String(d.decile), value: d.lift ?? 0 })),
          width,
          height,
          yMax,
        );
        const y = scaleLinear<number, number>().domain([0, yMax]).range([height, 0]);
        const capture = scaleLinear<number, number>().domain([0, 1]).range([height, 0]);
        const centres = bars.map((b) => b.x + b.width / 2);
        const points = deciles
          .map((d, i) => (d.capture === null ? null : `${centres[i]},${capture(d.capture)}`))
          .filter((p): p is string => p !== null);
        const x = scaleLinear<number, number>().domain([0.5, deciles.length + 0.5]).range([0, width]);
        return (
          <>
            {bars.map((bar) => (
              <rect key={bar.key} className="bar" x={bar.x} y={bar.y} width={bar.width} height={bar.height} fill={COLORS[0]} opacity={0.8} data-value={bar.value} />
            ))}
            <line x1={0} x2={width} y1={y(1)} y2={y(1)} stroke={GRID} strokeDasharray="4 4" />
            <polyline className="capture" points={points.join(' ')} fill="none" stroke={COLORS[4]} strokeWidth={2} />
            <Axis scale={x} orient="bottom" ticks={deciles.length} transform={`translate(0,${height})`} format={(v) => String(Math.round(v))} />
            <Axis scale={y} orient="left" format={(v) => v.toFixed(1)} />
            <Axis scale={capture} orient="right" transform={`translate(${width},0)`} format={(v) => `${Math.round(v * 100)}%`} />
            <text x={width / 2} y={height + 36} textAnchor="middle" fontSize={12} fill="#424242">
              decile (1 = highest scores)
            </text>
          </>
        );
      }}
    </ChartFrame>
  );
}
