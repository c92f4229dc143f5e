// The raw shape of the addon's exports, as the C++ binding defines them. Only
// lib/native/ uses these types; the rest of the code uses the wrappers.
// Each binding file adds its part to RawAddon.

export interface RawAddon {
  [name: string]: unknown;
}
