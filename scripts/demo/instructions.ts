/**
 * Instruction records over stories. Each record's input is a new story followed, on its own line,
 * by a question the story answers exactly, and every record has the same instruction
 * (`INSTRUCTION`). Each task type has one fixed question pattern, so a small model with an
 * adapter can learn each pattern.
 *
 * The question comes after the story, not in the instruction, because the Alpaca prompt puts the
 * instruction before the input: there, a model would have to carry the question's subject past
 * the whole story to the answer. After the story, the question sits where the corpus's primer
 * questions do (corpus.ts).
 *
 * Answer format: a short span copied from the input (a colour, a name, a place with its
 * article, a food), a comma-separated list of animals in order of first appearance, a number
 * word, or the first sentence with its full stop. Answers have no final full stop except that
 * copied sentence, and keep the case they have in the input.
 *
 * Every input and every output starts with one space (`LEADING_SPACE`). The demo tokenizer,
 * like SentencePiece, stores a word with its leading space (" red"), and in the Alpaca prompt
 * both fields follow a newline. Without the space their first word would be spelled with
 * pieces ("red", "Tom") that never occur in the pretraining corpus. With it, an input
 * tokenizes exactly as the same story does in the corpus, and an answer's tokens are tokens of
 * the input, so the model only has to copy them. Exact-match scoring trims whitespace, so the
 * space does not affect accuracy.
 */
import type { Rng } from "../../model/rng.ts";
import {
  LEADING_SPACE,
  MAX_REPEATED_STORIES,
  repeatedStoriesError,
  type Story,
  type StoryRequirements,
  writeStory,
} from "./corpus.ts";
import { NUMBER_WORDS, pick, type World } from "./world.ts";

/** The task types; `makeInstructions` draws them in equal numbers. */
export const TASKS = [
  "colour",
  "home",
  "owner",
  "animals",
  "count",
  "first_sentence",
  "trip",
  "food",
] as const;

/** A task type. */
export type Task = typeof TASKS[number];

/** The instruction of every record; the question is the input's last line. */
export const INSTRUCTION = "Answer using the text.";

/** Text between the story and the question in an input. */
export const QUESTION_SEPARATOR = "\n";

export { LEADING_SPACE } from "./corpus.ts";

/** An Alpaca record with the task type it was made for. */
export interface InstructionRecord {
  instruction: string;
  input: string;
  output: string;
  task: Task;
}

/** Facts each task needs in its story. */
const REQUIREMENTS: Record<Task, StoryRequirements> = {
  colour: {},
  home: { home: true },
  owner: {},
  animals: { animal: true },
  count: { animal: true },
  first_sentence: {},
  trip: { trip: true },
  food: { food: true },
};

/** Returns the question and its answer (without LEADING_SPACE) for `task` about `story`. */
function ask(task: Task, story: Story, rng: Rng): { question: string; answer: string } {
  switch (task) {
    case "colour": {
      const noun = pick(rng, [...story.colours.keys()]);
      return { question: `What colour is the ${noun}?`, answer: story.colours.get(noun)! };
    }
    case "home": {
      const person = pick(rng, [...story.homes.keys()]);
      return { question: `Where does ${person} live?`, answer: story.homes.get(person)! };
    }
    case "owner": {
      const noun = pick(rng, [...story.owners.keys()]);
      return { question: `Who has the ${noun}?`, answer: story.owners.get(noun)! };
    }
    case "animals":
      return { question: "List the animals in the text.", answer: story.animals.join(", ") };
    case "count":
      return {
        question: "How many animals are in the text?",
        answer: NUMBER_WORDS[story.animals.length],
      };
    case "first_sentence":
      return { question: "Repeat the first sentence.", answer: story.sentences[0] };
    case "trip": {
      const trip = story.trip!;
      const person = pick(rng, trip.people);
      return { question: `Where did ${person} go on ${trip.day}?`, answer: trip.place };
    }
    case "food": {
      const person = pick(rng, [...story.foods.keys()]);
      return { question: `What food does ${person} like?`, answer: story.foods.get(person)! };
    }
  }
}

/**
 * Draws one record of type `task` whose input is a story not in `used`, and adds that story to
 * `used`. Throws when the world has run out of new stories.
 */
export function makeInstruction(
  world: World,
  rng: Rng,
  task: Task,
  used: Set<string>,
): InstructionRecord {
  for (let repeats = 0; repeats <= MAX_REPEATED_STORIES; repeats++) {
    const story = writeStory(world, rng, REQUIREMENTS[task]);
    if (used.has(story.text)) continue;
    used.add(story.text);
    const { question, answer } = ask(task, story, rng);
    return {
      instruction: INSTRUCTION,
      input: LEADING_SPACE + story.text + QUESTION_SEPARATOR + question,
      output: LEADING_SPACE + answer,
      task,
    };
  }
  throw repeatedStoriesError(1);
}

/**
 * Draws `count` records with the task types balanced (each type `count / TASKS.length` times,
 * give or take one) in random order, all inputs new stories (see `makeInstruction`).
 */
export function makeInstructions(
  world: World,
  rng: Rng,
  count: number,
  used: Set<string>,
): InstructionRecord[] {
  const tasks = rng.shuffle(Array.from({ length: count }, (_, i) => TASKS[i % TASKS.length]));
  return tasks.map((task) => makeInstruction(world, rng, task, used));
}
