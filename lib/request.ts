// One policy request, normalised once: the rest of the program never looks
// at raw attribute text again.

import { parseIp, stripAngles, type ParsedIp } from './normalize'

export interface PolicyRequest {
  attrs: ReadonlyMap<string, string>
  request: string
  /** Upper case: RCPT, DATA, END-OF-MESSAGE, ... */
  protocolState: string
  clientAddress: string
  /** Null when client_address is missing or not an IP address. */
  clientIp: ParsedIp | null
  /** Forward-confirmed client host name, `unknown` when Postfix has none. */
  clientName: string
  helo: string
  /** Envelope sender without angle brackets, '' for the null sender. */
  sender: string
  recipient: string
  instance: string
  queueId: string
}

function attr(attrs: ReadonlyMap<string, string>, name: string): string {
  return (attrs.get(name) ?? '').trim()
}

export function toPolicyRequest(attrs: ReadonlyMap<string, string>): PolicyRequest {
  const clientAddress = attr(attrs, 'client_address')
  return {
    attrs,
    request: attr(attrs, 'request'),
    protocolState: attr(attrs, 'protocol_state').toUpperCase(),
    clientAddress,
    clientIp: clientAddress === '' ? null : parseIp(clientAddress),
    clientName: attr(attrs, 'client_name').toLowerCase() || 'unknown',
    helo: attr(attrs, 'helo_name'),
    sender: stripAngles(attr(attrs, 'sender')),
    recipient: stripAngles(attr(attrs, 'recipient')),
    instance: attr(attrs, 'instance'),
    queueId: attr(attrs, 'queue_id'),
  }
}
