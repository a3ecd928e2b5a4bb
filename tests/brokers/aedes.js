// aedes 0.51 (an MQTT 3.1.1 broker for Node.js; 1.x needs Node.js 20, Debian 12 ships 18) behind TLS that requires a client certificate signed
// by the test CA, for tests/interop.rs. Sessions and retained messages live in memory, so a
// restart loses them, as with the test mosquitto (persistence false).
//
//   node aedes.js PORT CA CERT KEY
'use strict';
const fs = require('fs');
const tls = require('tls');
const aedes = require('aedes');

async function main() {
  const [port, ca, cert, key] = process.argv.slice(2);
  const broker = aedes();
  broker.on('client', (client) => console.log(`client connected ${client.id}`));
  broker.on('clientDisconnect', (client) => console.log(`client disconnected ${client.id}`));
  broker.on('clientError', (client, err) => console.log(`client error ${client && client.id}: ${err.message}`));
  const server = tls.createServer({
    ca: fs.readFileSync(ca),
    cert: fs.readFileSync(cert),
    key: fs.readFileSync(key),
    requestCert: true,
    rejectUnauthorized: true,
  }, broker.handle);
  server.on('tlsClientError', (err) => console.log(`tls error: ${err.message}`));
  server.listen(Number(port), '127.0.0.1', () => console.log(`listening on ${port}`));
  const stop = () => server.close(() => broker.close(() => process.exit(0)));
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
