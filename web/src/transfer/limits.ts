// The importers' limits and their error, the SDK's (sdk/fabula_sdk/importers/checks.py): a file
// is read and checked whole before anything is stored; a refusal names the field by its path.
export const MAX_FILE_BYTES = 16 * 1024 * 1024;
export const MAX_STORY_TEXT_CHARS = 8_000_000;
export const MAX_NAME_CHARS = 1_000;

export class ImportRefused extends Error {
  name = "ImportRefused";
  constructor(readonly path: string, reason: string) {
    super(path ? `${path}: ${reason}` : reason);
  }
}
