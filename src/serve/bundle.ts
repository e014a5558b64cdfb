/** The pages' scripts, bundled from src/serve/web with esbuild on first request and kept in memory. */
import { build } from 'esbuild';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

const WEB = join(import.meta.dirname, 'web');
const bundles = new Map<string, Promise<Uint8Array>>();

export type PageName = 'segment' | 'runs';

export function pageScript(page: PageName): Promise<Uint8Array> {
  let b = bundles.get(page);
  if (!b) {
    b = build({
      entryPoints: [join(WEB, `${page}.ts`)],
      bundle: true,
      write: false,
      format: 'esm',
      platform: 'browser',
      target: 'es2022',
      logLevel: 'silent',
    }).then((r) => r.outputFiles[0].contents);
    bundles.set(page, b);
    b.catch(() => bundles.delete(page));
  }
  return b;
}

export const STYLE = readFileSync(join(WEB, 'style.css'));

const BODIES: Record<PageName, string> = {
  segment: readFileSync(join(WEB, 'segment.html'), 'utf8'),
  runs: readFileSync(join(WEB, 'runs.html'), 'utf8'),
};

/** A page: the token the API asks for, the title, the body markup (web/<page>.html), its script. */
export function pageHtml(page: PageName, token: string): string {
  const body = BODIES[page];
  const title = page === 'segment' ? 'medtune · segment' : 'medtune · runs';
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${title}</title>
<meta name="medtune-token" content="${token}">
<link rel="stylesheet" href="/assets/style.css"></head>
<body><nav><b>medtune</b> <a href="/"${page === 'segment' ? ' class="here"' : ''}>segment</a> <a href="/runs"${page === 'runs' ? ' class="here"' : ''}>runs</a></nav>
${body}
<script type="module" src="/assets/${page}.js"></script></body></html>`;
}
