/** Whether an optional package resolves from the project (tests of optional backends branch on it). */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

export function installed(pkg: string): boolean {
  try {
    require.resolve(pkg);
    return true;
  } catch {
    return false;
  }
}
