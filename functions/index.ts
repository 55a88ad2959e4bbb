/**
 * Every queue function, registered with functions-framework by name. This is
 * the package's main module: `gcloud functions deploy NAME --entry-point=NAME`
 * deploys one of them, and dist/bin/serve.js serves them all.
 */
export { credentialIssue } from './credentialIssue';
export { credentialList } from './credentialList';
export { credentialRevoke } from './credentialRevoke';
export { envelopeCreate } from './envelopeCreate';
export { envelopeDelete } from './envelopeDelete';
export { envelopeLoad } from './envelopeLoad';
export { envelopeUpdate } from './envelopeUpdate';
export { envelopeWalk } from './envelopeWalk';
export { instanceHeartbeat } from './instanceHeartbeat';
export { messageCommit } from './messageCommit';
export { messageCorrupt } from './messageCorrupt';
export { messageCreate } from './messageCreate';
export { messageDelete } from './messageDelete';
export { messageFd } from './messageFd';
export { messagePurge } from './messagePurge';
export { messageUncorrupt } from './messageUncorrupt';
export { messageWalk } from './messageWalk';
export { messageWrite } from './messageWrite';
export { queueStatus } from './queueStatus';
export { queueTakeover } from './queueTakeover';
