/**
 * Prompt templates, stored by name in adapter metadata so that generation formats a prompt the
 * same way training did.
 *
 * - "alpaca": the Stanford Alpaca prompt, with an "### Input:" section when the record has a
 *   non-empty input. The model learns to write the response after "### Response:\n".
 * - "none": raw text. The prompt is the instruction itself, followed by a blank line and the input
 *   when there is one.
 */

/** Names of the prompt templates. */
export const TEMPLATE_NAMES = ["alpaca", "none"] as const;

/** A prompt template name. */
export type TemplateName = typeof TEMPLATE_NAMES[number];

const ALPACA_WITH_INPUT_HEADER = "Below is an instruction that describes a task, paired with an " +
  "input that provides further context. Write a response that appropriately completes the " +
  "request.\n\n";

const ALPACA_HEADER = "Below is an instruction that describes a task. Write a response that " +
  "appropriately completes the request.\n\n";

const ALPACA_RESPONSE_MARKER = "\n\n### Response:\n";

/** Returns `name` as a template name, or throws an error that lists the known names. */
export function parseTemplateName(name: string): TemplateName {
  const known = TEMPLATE_NAMES as readonly string[];
  if (!known.includes(name)) {
    throw new Error(
      `unknown prompt template "${name}": expected one of ${TEMPLATE_NAMES.join(", ")}`,
    );
  }
  return name as TemplateName;
}

/**
 * Formats the prompt that precedes a response. An absent or empty `input` selects the template's
 * form without input. The response (training output, or generated text) follows the returned
 * string directly.
 *
 * @example formatPrompt("alpaca", "Name a color.") ends with "### Response:\n".
 */
export function formatPrompt(template: TemplateName, instruction: string, input?: string): string {
  const hasInput = input !== undefined && input.length > 0;
  switch (template) {
    case "alpaca":
      return hasInput
        ? `${ALPACA_WITH_INPUT_HEADER}### Instruction:\n${instruction}\n\n### Input:\n${input}` +
          ALPACA_RESPONSE_MARKER
        : `${ALPACA_HEADER}### Instruction:\n${instruction}${ALPACA_RESPONSE_MARKER}`;
    case "none":
      return hasInput ? `${instruction}\n\n${input}` : instruction;
  }
}

/**
 * Returns the fixed text at the end of every prompt of a template, which truncation keeps so that
 * a shortened prompt still ends the way the model expects. Empty for "none".
 */
export function responseMarker(template: TemplateName): string {
  switch (template) {
    case "alpaca":
      return ALPACA_RESPONSE_MARKER;
    case "none":
      return "";
  }
}
