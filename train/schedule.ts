/**
 * Learning-rate schedule of the published LLaMA-Adapter recipe: linear warm-up from 0, then a
 * half-cycle cosine from the peak down to a floor.
 */

/** Parameters of `learningRate`. */
export interface Schedule {
  /** Peak learning rate, reached at the end of warm-up. */
  lr: number;
  /** Floor reached at the last step. */
  minLr: number;
  /** Steps of linear warm-up. */
  warmupSteps: number;
  /** Total optimiser steps of the run. */
  totalSteps: number;
}

/** Returns the learning rate for optimiser step `step` (0-based). */
export function learningRate(s: Schedule, step: number): number {
  if (step < s.warmupSteps) return (s.lr * (step + 1)) / s.warmupSteps;
  const span = Math.max(1, s.totalSteps - s.warmupSteps);
  const progress = Math.min(1, (step - s.warmupSteps) / span);
  return s.minLr + (s.lr - s.minLr) * 0.5 * (1 + Math.cos(Math.PI * progress));
}

/** Base learning rate of the recipe, per 256 examples of effective batch. */
export const BASE_LR = 9e-3;

/** Returns the recipe's learning rate for an effective batch: BASE_LR x batch / 256. */
export function scaledLearningRate(effectiveBatch: number, baseLr = BASE_LR): number {
  return (baseLr * effectiveBatch) / 256;
}
