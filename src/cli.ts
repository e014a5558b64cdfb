/** The `medtune` command line. Each subcommand lives in src/commands and loads its heavy parts lazily. */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { doctorCommand } from './commands/doctor.js';
import { evalCommand } from './commands/eval.js';
import { exportCommand } from './commands/export.js';
import { inspectCommand } from './commands/inspect.js';
import { predictCommand } from './commands/predict.js';
import { prepareCommand } from './commands/prepare.js';
import { serveCommand } from './commands/serve.js';
import { setupCommand } from './commands/setup.js';
import { trainCommand } from './commands/train.js';

await yargs(hideBin(process.argv))
  .scriptName('medtune')
  .command(inspectCommand)
  .command(trainCommand)
  .command(exportCommand)
  .command(predictCommand)
  .command(evalCommand)
  .command(prepareCommand)
  .command(serveCommand)
  .command(setupCommand)
  .command(doctorCommand)
  .demandCommand(1, 'Name a command: inspect, train, export, predict, eval, prepare, serve, setup or doctor.')
  .strict()
  .fail((msg, err, y) => {
    if (err) {
      console.error(`medtune: ${err.message}`);
    } else {
      console.error(`${y.help()}\n\nmedtune: ${msg}`);
    }
    process.exit(1);
  })
  .help()
  .parseAsync();
