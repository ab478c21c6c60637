/**
 * Stories: short texts in simple English about the people of the demo world, each a few
 * sentences from a small set of templates ("Tom has a red ball. Tom lives in the old town.").
 * A story keeps the facts it states, so questions about it can be answered exactly
 * (instructions.ts).
 *
 * Every story names each object kind and each animal kind at most once, with one colour each, so
 * "What colour is the cat?" and "Who has the ball?" have a single answer. Pronouns are avoided:
 * names repeat, which keeps the texts easy for a small model.
 */
import { formatPrompt } from "../../data/templates.ts";
import type { Rng } from "../../model/rng.ts";
import {
  ANIMAL_ADJECTIVES,
  ANIMALS,
  article,
  COLOURS,
  DAYS,
  DESTINATIONS,
  NUMBER_WORDS,
  OBJECTS,
  type Person,
  personNamed,
  pick,
  type World,
} from "./world.ts";

/** A trip stated by a story ("On Monday, Tom went to the park."). */
export interface Trip {
  /** The travellers, one or two names. */
  people: string[];
  day: string;
  place: string;
}

/** A story's text and the facts it states. */
export interface Story {
  text: string;
  sentences: string[];
  /** Home place by person, for people whose home the story states. */
  homes: Map<string, string>;
  /** Colour by noun, for every object and animal in the story. */
  colours: Map<string, string>;
  /** Owner by noun, for objects and pets. */
  owners: Map<string, string>;
  /** Animal nouns in order of first appearance. */
  animals: string[];
  /** The story's trip, or null when it states none. */
  trip: Trip | null;
  /** Favourite food by person, for people whose food the story states. */
  foods: Map<string, string>;
}

/** Facts a story must state, so that a given question can be asked about it. */
export interface StoryRequirements {
  home?: boolean;
  animal?: boolean;
  trip?: boolean;
  food?: boolean;
}

/** Limits on the length of a story; stories outside them are drawn again. */
export const STORY_SENTENCES = { min: 4, max: 8 } as const;
export const STORY_WORDS = { min: 24, max: 64 } as const;

/** Draws of one story before giving up; a few are enough for any requirement. */
const MAX_STORY_ATTEMPTS = 1000;

/** Draws of already used texts a split may make before the world counts as exhausted. */
export const MAX_REPEATED_STORIES = 10_000;

/** Returns the error for a world too small to give `count` new texts. */
export function repeatedStoriesError(count: number): Error {
  return new Error(
    `drew ${MAX_REPEATED_STORIES} stories that were already used while collecting ${count} new ` +
      `ones; the world is too small for this many texts, so use more people or fewer texts`,
  );
}

/** Sentences that state one fact, kept together when the story's facts are shuffled. */
interface Unit {
  sentences: string[];
  /** Animal nouns of the sentences, in order. */
  animals: string[];
}

/** Mutable state while a story is drawn. */
class StoryDraft {
  readonly units: Unit[] = [];
  readonly homes = new Map<string, string>();
  readonly colours = new Map<string, string>();
  readonly owners = new Map<string, string>();
  readonly foods = new Map<string, string>();
  readonly usedNouns = new Set<string>();
  trip: Trip | null = null;

  constructor(readonly rng: Rng) {}

  /** Returns a random element of `nouns` not yet in the story, or null when all are. */
  freshNoun(nouns: readonly string[]): string | null {
    const free = nouns.filter((n) => !this.usedNouns.has(n));
    return free.length === 0 ? null : pick(this.rng, free);
  }
}

function sentence(words: string): string {
  return words[0].toUpperCase() + words.slice(1) + ".";
}

function aColour(colour: string, noun: string): string {
  return `${article(colour)} ${colour} ${noun}`;
}

function addHome(d: StoryDraft, person: Person): void {
  d.homes.set(person.name, person.home);
  const forms = [
    `${person.name} lives in ${person.home}`,
    `the home of ${person.name} is in ${person.home}`,
  ];
  d.units.push({ sentences: [sentence(pick(d.rng, forms))], animals: [] });
}

function addObject(d: StoryDraft, owner: string): void {
  const noun = d.freshNoun(OBJECTS);
  if (noun === null) return;
  const colour = pick(d.rng, COLOURS);
  d.usedNouns.add(noun);
  d.colours.set(noun, colour);
  d.owners.set(noun, owner);

  // "one" sometimes replaces the article, so that the corpus contains the number words that
  // count answers use.
  const draw = d.rng.uniform();
  const sentences = draw < 0.5
    ? [sentence(`${owner} has ${aColour(colour, noun)}`)]
    : draw < 0.6
    ? [sentence(`${owner} has one ${colour} ${noun}`)]
    : [sentence(`${owner} has ${article(noun)} ${noun}`), sentence(`the ${noun} is ${colour}`)];
  if (d.rng.uniform() < 0.25) sentences.push(sentence(`${owner} plays with the ${noun} every day`));
  d.units.push({ sentences, animals: [] });
}

function addPet(d: StoryDraft, person: Person): void {
  const pet = person.pet;
  if (!pet || d.usedNouns.has(pet.animal)) return;
  d.usedNouns.add(pet.animal);
  d.colours.set(pet.animal, pet.colour);
  d.owners.set(pet.animal, person.name);

  const sentences = d.rng.uniform() < 0.6
    ? [sentence(`${person.name} has ${aColour(pet.colour, pet.animal)}`)]
    : [
      sentence(`${person.name} has a pet ${pet.animal}`),
      sentence(`the ${pet.animal} is ${pet.colour}`),
    ];
  if (d.rng.uniform() < 0.3) {
    sentences.push(sentence(`the ${pet.animal} is ${pick(d.rng, ANIMAL_ADJECTIVES)}`));
  }
  d.units.push({ sentences, animals: [pet.animal] });
}

function addSighting(d: StoryDraft, person: string): void {
  const place = pick(d.rng, DESTINATIONS);
  const count = d.rng.uniform() < 0.35 ? 2 : 1;
  const seen: string[] = [];
  for (let i = 0; i < count; i++) {
    const animal = d.freshNoun(ANIMALS);
    if (animal === null) break;
    const colour = pick(d.rng, COLOURS);
    d.usedNouns.add(animal);
    d.colours.set(animal, colour);
    seen.push(animal);
  }
  if (seen.length === 0) return;

  const phrase = seen.map((a) => aColour(d.colours.get(a)!, a)).join(" and ");
  const forms = [`${person} sees ${phrase} at ${place}`, `at ${place}, ${person} sees ${phrase}`];
  const sentences = [sentence(pick(d.rng, forms))];
  if (seen.length === 1 && d.rng.uniform() < 0.3) {
    sentences.push(sentence(`the ${seen[0]} is ${pick(d.rng, ANIMAL_ADJECTIVES)}`));
  }
  d.units.push({ sentences, animals: seen });
}

function addTrip(d: StoryDraft, people: string[]): void {
  const trip = { people, day: pick(d.rng, DAYS), place: pick(d.rng, DESTINATIONS) };
  d.trip = trip;
  const who = people.join(" and ");
  const forms = [
    `on ${trip.day}, ${who} went to ${trip.place}`,
    `${who} went to ${trip.place} on ${trip.day}`,
  ];
  d.units.push({ sentences: [sentence(pick(d.rng, forms))], animals: [] });
}

function addFood(d: StoryDraft, person: Person): void {
  d.foods.set(person.name, person.food);
  const forms = [
    `${person.name} likes ${person.food}`,
    `the favourite food of ${person.name} is ${person.food}`,
  ];
  d.units.push({ sentences: [sentence(pick(d.rng, forms))], animals: [] });
}

function addAge(d: StoryDraft, person: Person): void {
  const age = NUMBER_WORDS[person.age];
  d.units.push({ sentences: [sentence(`${person.name} is ${age} years old`)], animals: [] });
}

function addFriends(d: StoryDraft, a: string, b: string): void {
  const forms = [`${a} and ${b} are friends`, `${a} is a friend of ${b}`];
  d.units.push({ sentences: [sentence(pick(d.rng, forms))], animals: [] });
}

/** Draws the facts of one story; the length limits are checked by the caller. */
function draftStory(world: World, rng: Rng, require: StoryRequirements): StoryDraft {
  const d = new StoryDraft(rng);
  const main = pick(rng, world.people);
  const cast: Person[] = [main];
  if (rng.uniform() < 0.5) cast.push(personNamed(world, main.friend));
  const names = cast.map((p) => p.name);

  for (const person of cast) {
    const required = person === main && require.home;
    if (required || rng.uniform() < 0.45) addHome(d, person);
  }
  const objects = 1 + rng.int(2);
  for (let i = 0; i < objects; i++) addObject(d, pick(rng, names));
  for (const person of cast) {
    if (rng.uniform() < 0.5) addPet(d, person);
  }
  if (rng.uniform() < 0.4) addSighting(d, pick(rng, names));
  if (require.animal && d.units.every((u) => u.animals.length === 0)) {
    addSighting(d, pick(rng, names));
  }
  if (require.trip || rng.uniform() < 0.35) {
    addTrip(d, cast.length === 2 && rng.uniform() < 0.4 ? names : [main.name]);
  }
  for (const person of cast) {
    const required = person === main && require.food;
    if (required || rng.uniform() < 0.3) addFood(d, person);
  }
  for (const person of cast) {
    if (rng.uniform() < 0.2) addAge(d, person);
  }
  if (cast.length === 2 && rng.uniform() < 0.6) addFriends(d, names[0], names[1]);
  return d;
}

function wordCount(text: string): number {
  return text.split(" ").length;
}

/**
 * Draws a story about one person of `world` (and, half the time, their friend) that states the
 * facts `require` asks for, with STORY_SENTENCES sentences and STORY_WORDS words.
 */
export function writeStory(world: World, rng: Rng, require: StoryRequirements = {}): Story {
  for (let attempt = 0; attempt < MAX_STORY_ATTEMPTS; attempt++) {
    const d = draftStory(world, rng, require);
    rng.shuffle(d.units);
    const sentences = d.units.flatMap((u) => u.sentences);
    const text = sentences.join(" ");
    const words = wordCount(text);
    if (
      sentences.length < STORY_SENTENCES.min || sentences.length > STORY_SENTENCES.max ||
      words < STORY_WORDS.min || words > STORY_WORDS.max
    ) continue;
    return {
      text,
      sentences,
      homes: d.homes,
      colours: d.colours,
      owners: d.owners,
      animals: d.units.flatMap((u) => u.animals),
      trip: d.trip,
      foods: d.foods,
    };
  }
  throw new Error(
    `no story met the length limits in ${MAX_STORY_ATTEMPTS} draws; ` +
      `widen STORY_SENTENCES or STORY_WORDS`,
  );
}

/** The kinds of closing exchange; one per instruction task type (instructions.ts). */
const CLOSING_KINDS = [
  "colour",
  "owner",
  "home",
  "food",
  "trip",
  "animals",
  "count",
  "first_sentence",
] as const;

/** Text between a corpus story and its closing exchanges, and between two exchanges. */
export const EXCHANGE_SEPARATOR = "\n";

/**
 * Returns the exchanges that can close `story`, grouped by kind: a question about the story and
 * its answer as a full sentence, as in a reading primer ("What colour is the ball? The ball is
 * red."). To predict such an answer a model has to find the fact earlier in the same text, so
 * these teach the base model to read back through its input. The instruction set asks the same
 * questions but wants short answers in the Alpaca format, which the base model never sees with
 * a question.
 */
export function closingExchanges(story: Story): Map<string, string[]> {
  const kinds = new Map<string, string[]>();
  const add = (kind: (typeof CLOSING_KINDS)[number], question: string, answer: string) => {
    if (!kinds.has(kind)) kinds.set(kind, []);
    kinds.get(kind)!.push(`${question} ${sentence(answer)}`);
  };
  for (const [noun, colour] of story.colours) {
    add("colour", `What colour is the ${noun}?`, `the ${noun} is ${colour}`);
  }
  for (const [noun, owner] of story.owners) {
    add("owner", `Who has the ${noun}?`, `${owner} has the ${noun}`);
  }
  for (const [person, home] of story.homes) {
    add("home", `Where does ${person} live?`, `${person} lives in ${home}`);
  }
  for (const [person, food] of story.foods) {
    add("food", `What food does ${person} like?`, `${person} likes ${food}`);
  }
  if (story.trip) {
    const { day, place } = story.trip;
    for (const person of story.trip.people) {
      add("trip", `Where did ${person} go on ${day}?`, `on ${day}, ${person} went to ${place}`);
    }
  }
  const n = story.animals.length;
  if (n > 0) {
    add("animals", "List the animals in the text.", `the animals are ${story.animals.join(", ")}`);
    add(
      "count",
      "How many animals are in the text?",
      n === 1 ? "there is one animal" : `there are ${NUMBER_WORDS[n]} animals`,
    );
  }
  add("first_sentence", "Repeat the first sentence.", story.sentences[0].slice(0, -1));
  return kinds;
}

/**
 * Returns `story`'s text followed by one or two closing exchanges (see `closingExchanges`) of
 * different kinds, each on its own line, the kinds drawn uniformly from those the story allows.
 */
export function withExchanges(story: Story, rng: Rng): string {
  const kinds = closingExchanges(story);
  const order = rng.shuffle([...kinds.keys()]);
  const count = Math.min(order.length, 1 + rng.int(2));
  const exchanges = order.slice(0, count).map((kind) => pick(rng, kinds.get(kind)!));
  return [story.text, ...exchanges].join(EXCHANGE_SEPARATOR);
}

/** Capitalised words that start story sentences and are not names. */
const SENTENCE_OPENERS = ["The", "On", "At"];

/** Text that starts every instruction input and output; see instructions.ts. */
export const LEADING_SPACE = " ";

/** Share of corpus texts that are writing exercises (`writingExercise`). */
export const EXERCISE_SHARE = 0.1;

/**
 * Returns a writing exercise in the Alpaca format built on `story`: "Write a story about Tom."
 * answered by the story, or "Continue the text." with the story's first sentences as input and
 * the rest as the response. They teach the base model the prompt format (its header and
 * markers would otherwise be words it never saw) without any question.
 */
export function writingExercise(story: Story, rng: Rng): string {
  const { sentences } = story;
  if (rng.uniform() < 0.5) {
    // The first capitalised word that is not a sentence opener is the first name in the story.
    const name = story.text.split(/[ ,.]+/).find((w) =>
      /^[A-Z]/.test(w) && !SENTENCE_OPENERS.includes(w)
    )!;
    return formatPrompt("alpaca", `Write a story about ${name}.`) + LEADING_SPACE + story.text;
  }
  const cut = 1 + rng.int(sentences.length - 2);
  const input = LEADING_SPACE + sentences.slice(0, cut).join(" ");
  return formatPrompt("alpaca", "Continue the text.", input) + LEADING_SPACE +
    sentences.slice(cut).join(" ");
}

/**
 * Draws `count` corpus texts whose stories are not in `used`, adding each story to `used`, so
 * that corpus and instruction splits never share a story. A text is a story with closing
 * exchanges (`withExchanges`) or, with probability EXERCISE_SHARE, a writing exercise.
 */
export function writeCorpus(world: World, rng: Rng, count: number, used: Set<string>): string[] {
  const texts: string[] = [];
  let repeats = 0;
  while (texts.length < count) {
    const story = writeStory(world, rng);
    if (used.has(story.text)) {
      if (++repeats > MAX_REPEATED_STORIES) throw repeatedStoriesError(count);
      continue;
    }
    used.add(story.text);
    const exercise = rng.uniform() < EXERCISE_SHARE;
    texts.push(exercise ? writingExercise(story, rng) : withExchanges(story, rng));
  }
  return texts;
}
