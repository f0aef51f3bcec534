// Start http-cache-tests' origin on 127.0.0.1 only (it listens on every interface by default).
import http from 'http'
const listen = http.Server.prototype.listen
http.Server.prototype.listen = function (port, ...rest) {
  return listen.call(this, port, '127.0.0.1', ...rest.filter(a => typeof a === 'function'))
}
await import((process.env.SUITE_DIR || './node_modules/http-cache-tests') + '/server/server.mjs')
