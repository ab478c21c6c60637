/**
 * Progress display for long runs: a live bar on a terminal, a plain line every few seconds
 * otherwise (CI logs, pipes).
 */
import cliProgress from "cli-progress";

/** Values shown on each update. */
export interface ProgressValues {
  step: number;
  epoch?: number;
  loss?: number;
  lr?: number;
  tokensPerSecond?: number;
  [key: string]: number | string | undefined;
}

const PLAIN_INTERVAL_MS = 5000;

function formatEta(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "?";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return h
    ? `${h}h${String(m).padStart(2, "0")}m`
    : m
    ? `${m}m${String(r).padStart(2, "0")}s`
    : `${r}s`;
}

function fmtNum(v: number | undefined, digits: number): string {
  if (v === undefined || !Number.isFinite(v)) return "-";
  return Math.abs(v) < 1e-3 && v !== 0 ? v.toExponential(2) : v.toFixed(digits);
}

/** A progress bar over `total` steps. */
export class Progress {
  #bar: cliProgress.SingleBar | null = null;
  #total: number;
  #start = performance.now();
  #startStep: number;
  #lastPlain = 0;
  #label: string;
  #enabled: boolean;

  constructor(label: string, total: number, startStep = 0, enabled = true) {
    this.#label = label;
    this.#total = total;
    this.#startStep = startStep;
    this.#enabled = enabled;
    if (enabled && Deno.stderr.isTerminal()) {
      this.#bar = new cliProgress.SingleBar({
        format: `${label} [{bar}] {value}/{total} | epoch {epoch} | loss {loss} | lr {lr} | ` +
          `{tps} tok/s | ETA {etaText}`,
        hideCursor: true,
        stream: process.stderr,
        barsize: 24,
      }, cliProgress.Presets.shades_classic);
      this.#bar.start(total, startStep, this.#payload({ step: startStep }));
    }
  }

  #eta(step: number): number {
    const elapsed = (performance.now() - this.#start) / 1000;
    const done = step - this.#startStep;
    return done > 0 ? (elapsed / done) * (this.#total - step) : NaN;
  }

  #payload(v: ProgressValues) {
    return {
      epoch: v.epoch === undefined ? "-" : fmtNum(v.epoch, 2),
      loss: fmtNum(v.loss, 4),
      lr: fmtNum(v.lr, 6),
      tps: v.tokensPerSecond === undefined ? "-" : Math.round(v.tokensPerSecond).toString(),
      etaText: formatEta(this.#eta(v.step)),
    };
  }

  /** Shows the values at `v.step`. */
  update(v: ProgressValues): void {
    if (!this.#enabled) return;
    const p = this.#payload(v);
    if (this.#bar) {
      this.#bar.update(v.step, p);
      return;
    }
    const now = performance.now();
    if (now - this.#lastPlain >= PLAIN_INTERVAL_MS || v.step >= this.#total) {
      this.#lastPlain = now;
      console.error(
        `${this.#label} step ${v.step}/${this.#total} | epoch ${p.epoch} | loss ${p.loss} | ` +
          `lr ${p.lr} | ${p.tps} tok/s | ETA ${p.etaText}`,
      );
    }
  }

  /** Prints a message above the bar. */
  log(message: string): void {
    if (this.#bar) this.#bar.stop();
    console.error(message);
    if (this.#bar) this.#bar.start(this.#total, this.#bar.getProgress() * this.#total);
  }

  stop(): void {
    this.#bar?.stop();
    this.#bar = null;
  }
}
