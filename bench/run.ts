import { parseArgs } from 'node:util';
import { writeResults } from './report';
import { benchService } from './service';

/** `npm run bench`: every benchmark, side by side in one run; tables on stdout, JSON in bench/results/. */
process.env.METADATA_SERVER_DETECTION ??= 'none';
process.env.LOG_LEVEL ??= 'silent';

const { values } = parseArgs({
  options: {
    only: { type: 'string' },
    iterations: { type: 'string', default: '200' },
  },
});

async function main(): Promise<void> {
  const results: Record<string, unknown> = { machine: { cpus: require('node:os').cpus().length, node: process.version }, startedAt: new Date().toISOString() };
  if (!values.only || values.only === 'service') {
    const service = await benchService(Number(values.iterations));
    process.stdout.write(service.table);
    results.service = service.results;
  }
  process.stdout.write(`\nresults: ${writeResults('bench', results)}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
