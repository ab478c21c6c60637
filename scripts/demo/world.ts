/**
 * The demo world: a small, seeded set of people with fixed facts (home, pet, favourite food,
 * age, best friend) and the word lists that stories draw from. Stories (corpus.ts) mix these fixed
 * facts with per-story details (object colours, animals seen, trips), so the base model meets
 * the same people again and again and the instruction tasks must still read each text.
 *
 * The vocabulary is deliberately small (the stories use about 180 distinct words) and every noun
 * is singular, so a tiny model can learn the language in minutes and the demo tokenizer (768
 * ids) spells nearly every word as one token.
 */
import type { Rng } from "../../model/rng.ts";

/** Colour words; objects and animals in a story each get one. */
export const COLOURS = [
  "red",
  "blue",
  "green",
  "yellow",
  "black",
  "white",
  "brown",
  "pink",
  "grey",
  "orange",
  "purple",
] as const;

/** Animal nouns, all singular, none of them also a food or an object. */
export const ANIMALS = [
  "cat",
  "dog",
  "bird",
  "cow",
  "horse",
  "duck",
  "frog",
  "pig",
  "sheep",
  "rabbit",
  "mouse",
  "goat",
  "hen",
  "fox",
  "owl",
  "bear",
  "bee",
  "fish",
] as const;

/** Object nouns that people own. */
export const OBJECTS = [
  "ball",
  "box",
  "cup",
  "hat",
  "book",
  "kite",
  "bag",
  "car",
  "bike",
  "doll",
  "boat",
  "bell",
  "drum",
  "coat",
  "shoe",
  "key",
  "lamp",
  "pen",
  "chair",
  "clock",
] as const;

/** Adjectives that describe an animal in a follow-up sentence ("The dog is happy."). */
export const ANIMAL_ADJECTIVES = ["big", "small", "fast", "slow", "happy", "sleepy", "funny"];

/** Foods a person likes; none of them is an animal noun. */
export const FOODS = [
  "cake",
  "bread",
  "apples",
  "soup",
  "rice",
  "cheese",
  "milk",
  "eggs",
  "pears",
  "jam",
  "honey",
  "carrots",
] as const;

/** Places people visit on a trip or see animals at. */
export const DESTINATIONS = [
  "the park",
  "the shop",
  "the school",
  "the beach",
  "the zoo",
  "the river",
  "the market",
  "the garden",
  "the forest",
  "the pond",
] as const;

/** Days of the week, the time of a trip. */
export const DAYS = [
  "Monday",
  "Tuesday",
  "Wednesday",
  "Thursday",
  "Friday",
  "Saturday",
  "Sunday",
] as const;

/** Number words for counts and ages, index = number. */
export const NUMBER_WORDS = [
  "zero",
  "one",
  "two",
  "three",
  "four",
  "five",
  "six",
  "seven",
  "eight",
  "nine",
] as const;

/** First names the world draws its people from; one syllable or two, no two alike. */
const NAMES = [
  "Tom",
  "Anna",
  "Ben",
  "Lily",
  "Sam",
  "Mia",
  "Max",
  "Emma",
  "Leo",
  "Zoe",
  "Jack",
  "Lucy",
  "Dan",
  "Ella",
  "Tim",
  "Kate",
  "Joe",
  "Rose",
  "Bob",
  "Amy",
  "Ned",
  "Ivy",
  "Paul",
  "Nina",
  "Finn",
  "Ruby",
  "Ted",
  "Jane",
];

/** The two words of a home place name ("the old town"); every pair is a possible home. */
const HOME_ADJECTIVES = ["old", "new", "big", "small", "quiet", "sunny", "windy", "busy"];
const HOME_NOUNS = ["town", "village", "city"];

/** A person and the facts about them that every story agrees on. */
export interface Person {
  name: string;
  /** Home place with its article, e.g. "the old town". */
  home: string;
  /** The person's pet, or null for a person without one. */
  pet: { animal: string; colour: string } | null;
  food: string;
  /** Age in years, 2 to 9, written as a number word in stories. */
  age: number;
  /** Name of the person's best friend; friendship is mutual. */
  friend: string;
}

/** The people of the demo world and its home places. */
export interface World {
  people: Person[];
  homes: string[];
}

/** Options for `makeWorld`. */
export interface WorldOptions {
  /** Number of people, even and at most the number of names (default 24). */
  people?: number;
  /** Number of distinct home places, at most 24 (default 10). */
  homes?: number;
  /** Probability that a person has a pet (default 0.75). */
  petProbability?: number;
}

/** Returns a uniformly chosen element of `items`. */
export function pick<T>(rng: Rng, items: readonly T[]): T {
  return items[rng.int(items.length)];
}

/**
 * Builds a world from `rng`: `people` distinct names paired into mutual best friends, each with a
 * home among `homes` random places, a food, an age and possibly a pet. Throws on an odd count or one
 * larger than the name list.
 */
export function makeWorld(rng: Rng, options: WorldOptions = {}): World {
  const count = options.people ?? 24;
  const homeCount = options.homes ?? 10;
  const petProbability = options.petProbability ?? 0.75;
  if (count % 2 !== 0 || count < 2 || count > NAMES.length) {
    throw new Error(
      `the demo world needs an even number of people from 2 to ${NAMES.length}, not ${count}`,
    );
  }
  const allHomes = HOME_ADJECTIVES.flatMap((a) => HOME_NOUNS.map((n) => `the ${a} ${n}`));
  if (homeCount < 1 || homeCount > allHomes.length) {
    throw new Error(`the demo world needs 1 to ${allHomes.length} homes, not ${homeCount}`);
  }

  const homes = rng.shuffle(allHomes.slice()).slice(0, homeCount);
  const names = rng.shuffle(NAMES.slice()).slice(0, count);
  const people: Person[] = names.map((name, i) => ({
    name,
    home: pick(rng, homes),
    pet: rng.uniform() < petProbability
      ? { animal: pick(rng, ANIMALS), colour: pick(rng, COLOURS) }
      : null,
    food: pick(rng, FOODS),
    age: 2 + rng.int(8),
    // Names are already shuffled, so neighbours make random pairs.
    friend: names[i % 2 === 0 ? i + 1 : i - 1],
  }));
  return { people, homes };
}

/** Returns the person named `name`; throws when the world has no such person. */
export function personNamed(world: World, name: string): Person {
  const person = world.people.find((p) => p.name === name);
  if (!person) throw new Error(`the demo world has no person named ${name}`);
  return person;
}

/** Returns "a" or "an" for the word that follows the article. */
export function article(next: string): string {
  return /^[aeiou]/.test(next) ? "an" : "a";
}
