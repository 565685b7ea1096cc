import t from 'tap'
import { addressToALabels, clientNetwork, domainOf, ipInNetwork, maskIp, normalizeRecipient, normalizeSender, parseCidr, parseIp } from '../lib/normalize'

t.test('parseIp: got/want', async (t) => {
  const cases: Array<[string, string | null, 4 | 6 | null]> = [
    ['192.0.2.1', '192.0.2.1', 4],
    [' 192.0.2.1 ', '192.0.2.1', 4],
    ['0.0.0.0', '0.0.0.0', 4],
    ['255.255.255.255', '255.255.255.255', 4],
    ['256.1.1.1', null, null],
    ['01.2.3.4', null, null],
    ['1.2.3', null, null],
    ['1.2.3.4.5', null, null],
    ['', null, null],
    ['unknown', null, null],
    ['2001:DB8::1', '2001:db8::1', 6],
    ['2001:0db8:0000:0000:0000:0000:0000:0001', '2001:db8::1', 6],
    ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1', 6],
    ['2001:db8:0:1:1:1:1:1', '2001:db8:0:1:1:1:1:1', 6],
    ['::', '::', 6],
    ['::1', '::1', 6],
    ['fe80::1:2', 'fe80::1:2', 6],
    ['::ffff:192.0.2.7', '192.0.2.7', 4],
    ['::FFFF:c000:0207', '192.0.2.7', 4],
    // Only ::ffff:0:0/96 is IPv4-mapped: one bit off anywhere in its prefix stays IPv6.
    ['::ff00:c000:207', '::ff00:c000:207', 6],
    ['::ff:c000:207', '::ff:c000:207', 6],
    ['::fffe:c000:207', '::fffe:c000:207', 6],
    ['::1:ffff:c000:207', '::1:ffff:c000:207', 6],
    ['100::ffff:c000:207', '100::ffff:c000:207', 6],
    ['::c000:207', '::c000:207', 6],
    ['64:ff9b::192.0.2.1', '64:ff9b::c000:201', 6],
    ['2001:db8::1::2', null, null],
    ['2001:db8:::1', null, null],
    ['1:2:3:4:5:6:7:8:9', null, null],
    ['fe80::1%eth0', null, null],
    ['[2001:db8::1]', null, null],
    ['2001:db8::g', null, null],
    ['1.2.3.4::', null, null],
  ]
  for (const [got, want, family] of cases) {
    const ip = parseIp(got)
    t.equal(ip?.text ?? null, want, JSON.stringify(got))
    t.equal(ip?.family ?? null, family, `${JSON.stringify(got)} family`)
  }
})

t.test('clientNetwork and maskIp: got/want', async (t) => {
  const cases: Array<[string, number, number, string]> = [
    ['192.0.2.77', 24, 64, '192.0.2.0/24'],
    ['192.0.2.77', 25, 64, '192.0.2.0/25'],
    ['192.0.2.200', 25, 64, '192.0.2.128/25'],
    ['192.0.2.77', 8, 64, '192.0.0.0/8'],
    ['192.0.2.77', 0, 64, '0.0.0.0/0'],
    ['192.0.2.77', 32, 64, '192.0.2.77'],
    ['::ffff:192.0.2.77', 24, 64, '192.0.2.0/24'],
    ['2001:db8:1:2:3:4:5:6', 24, 64, '2001:db8:1:2::/64'],
    ['2001:db8:1:2:3:4:5:6', 24, 48, '2001:db8:1::/48'],
    ['2001:db8:1:2:3:4:5:6', 24, 128, '2001:db8:1:2:3:4:5:6'],
    ['2001:db8:1:2:3:4:5:6', 24, 0, '::/0'],
    ['2001:db8:1:2:ffff:4:5:6', 24, 72, '2001:db8:1:2:ff00::/72'],
  ]
  for (const [addr, v4, v6, want] of cases) t.equal(clientNetwork(parseIp(addr)!, v4, v6), want, `${addr} /${v4} /${v6}`)
  t.equal(maskIp(parseIp('10.1.2.3')!, 16).text, '10.1.0.0')
})

t.test('parseCidr and ipInNetwork', async (t) => {
  t.same(parseCidr('192.0.2.77/24')?.net.text, '192.0.2.0')
  t.equal(parseCidr('192.0.2.1')?.prefix, 32)
  t.equal(parseCidr('2001:db8::/32')?.prefix, 32)
  t.equal(parseCidr('::ffff:192.0.2.0/120')?.prefix, 24, 'mapped network given with an IPv6 length')
  for (const bad of ['192.0.2.0/33', '2001:db8::/129', '1.2.3.4/x', '1.2.3.4/24/1', 'host/24', '']) t.equal(parseCidr(bad), null, bad)
  const net = parseCidr('192.0.2.0/24')!
  t.ok(ipInNetwork(parseIp('192.0.2.255')!, net))
  t.notOk(ipInNetwork(parseIp('192.0.3.0')!, net))
  t.ok(ipInNetwork(parseIp('::ffff:192.0.2.9')!, net), 'mapped address matches its IPv4 network')
  t.notOk(ipInNetwork(parseIp('2001:db8::1')!, net), 'no match across families')
  t.ok(ipInNetwork(parseIp('2001:db8::1')!, parseCidr('2001:db8::/32')!))
})

t.test('normalizeSender: got/want', async (t) => {
  const cases: Array<[string, string]> = [
    ['', ''],
    ['<>', ''],
    ['Alice@Example.COM', 'alice@example.com'],
    ['<alice@example.com>', 'alice@example.com'],
    ['alice+news@example.com', 'alice@example.com'],
    ['bounce+12345-abc@lists.example', 'bounce@lists.example'],
    ['list-1234-5678@lists.example', 'list-#-#@lists.example'],
    ['user2000@example.com', 'user2000@example.com'],
    ['2000@example.com', '#@example.com'],
    ['prvs=1234abcdef=alice@example.com', 'alice@example.com'],
    ['PRVS=0123456789=Alice@Example.com', 'alice@example.com'],
    ['prvs=alice=1234abcdef@example.com', 'alice@example.com'],
    ['msprvs1=1862456789abc=bounces-42@mail.example', 'bounces-#@mail.example'],
    ['btv1==5a1==alice@example.com', 'alice@example.com'],
    ['SRS0=HHH=TT=orig.example=alice@forwarder.example', 'alice@orig.example'],
    ['srs0+Hash=tT=orig.example=alice@fw.example', 'alice@orig.example'],
    ['SRS1=HHH=fw1.example==HHH=TT=orig.example=alice@fw2.example', 'alice@orig.example'],
    ['SRS0=abcd=ZZ=orig.example=prvs=1234abcdef=bob@fw.example', 'bob@orig.example'],
    ['no-at-sign', 'no-at-sign'],
    ['@example.com', '@example.com'],
    ['weird"quoted"@example.com', 'weird"quoted"@example.com'],
  ]
  for (const [got, want] of cases) t.equal(normalizeSender(got), want, JSON.stringify(got))
})

t.test('recipient and domain helpers', async (t) => {
  t.equal(normalizeRecipient('<Bob@Example.ORG>'), 'bob@example.org')
  t.equal(normalizeRecipient('bob+tag@example.org'), 'bob+tag@example.org', 'recipient extensions kept: they can be different mailboxes')
  t.equal(domainOf('bob@Example.ORG.'), 'example.org')
  t.equal(domainOf('a@b@c.example'), 'c.example')
  t.equal(domainOf('nodomain'), '')
})

t.test('parseIp: IPv6 forms that must be refused or kept apart (issue 13)', async (t) => {
  const cases: Array<[string, string | null, 4 | 6 | null]> = [
    // Only ::ffff:0:0/96 is IPv4-mapped.
    ['::ff00:c000:207', '::ff00:c000:207', 6],
    ['::ff:c000:207', '::ff:c000:207', 6],
    ['1::ffff:c000:207', '1::ffff:c000:207', 6],
    ['0:0:0:0:0:ffff:192.0.2.7', '192.0.2.7', 4],
    ['0:0:0:0:1:ffff:192.0.2.7', '::1:ffff:c000:207', 6],
    // '::' stands for one group or more, never for none, and comes once.
    ['2001:db8:1:2:3:4::5', '2001:db8:1:2:3:4:0:5', 6],
    ['1:2:3:4:5:6:7::8', null, null],
    ['1:2:3:4:5:6:7:8::', null, null],
    ['1:2:3:4:5:6:7:8::1::2', null, null],
    // A group has 1 to 4 hex digits; a dotted quad only at the very end.
    ['2001:db8::12345', null, null],
    ['2001:db8::1:2:12345', null, null],
    ['1.2.3.4:5:6:7:8:9:a', null, null],
    ['::1.2.3.4:5', null, null],
  ]
  for (const [got, want, family] of cases) {
    const ip = parseIp(got)
    t.equal(ip?.text ?? null, want, JSON.stringify(got))
    t.equal(ip?.family ?? null, family, `${JSON.stringify(got)} family`)
  }
})

t.test('parseCidr: the length is 1 to 3 digits, the whole of it; a mapped network with its IPv6 length', async (t) => {
  t.equal(parseCidr(' 192.0.2.77/24 ')?.net.text, '192.0.2.0', 'surrounding white space')
  for (const bad of ['192.0.2.0/24x', '192.0.2.0/x24', '192.0.2.0/0024', '::ffff:192.0.2.0/95', '::ffff:192.0.2.0/129']) t.equal(parseCidr(bad), null, bad)
  t.same(parseCidr('::ffff:192.0.2.0/96') && { net: parseCidr('::ffff:192.0.2.0/96')!.net.text, prefix: parseCidr('::ffff:192.0.2.0/96')!.prefix }, { net: '0.0.0.0', prefix: 0 })
})

t.test('angle brackets come off only in pairs, with the white space inside them', async (t) => {
  t.equal(normalizeRecipient('< Bob@Example.ORG >'), 'bob@example.org')
  t.equal(normalizeRecipient('  <bob@example.org>  '), 'bob@example.org')
  t.equal(normalizeRecipient('<bob@example.org'), '<bob@example.org')
  t.equal(normalizeRecipient('bob@example.org>'), 'bob@example.org>')
  t.equal(normalizeSender(' <Alice@Example.COM> '), 'alice@example.com')
})

t.test('normalizeSender: BATV and SRS only at the start of the local part; SRS undone at most 3 levels deep', async (t) => {
  const cases: Array<[string, string]> = [
    ['list-btv1==5a1==alice@example.com', 'list-btv1==5a1==alice@example.com'],
    ['xsrs0=hhh=tt=orig.example=alice@fw.example', 'xsrs0=hhh=tt=orig.example=alice@fw.example'],
    ['xsrs1=hhh=fw1.example==hhh=tt=orig.example=alice@fw2.example', 'xsrs1=hhh=fw1.example==hhh=tt=orig.example=alice@fw2.example'],
    // A local part without a domain is left as it is (lower case, numbers folded).
    ['prvs=1234abcdef=Alice', 'prvs=1234abcdef=alice'],
    ['+tag@example.com', '+tag@example.com'],
    // A tag is exactly 4 digits and 6 hex digits: a user that starts like one is not the tag.
    ['prvs=2024abcdefsales=0123abc123@example.com', '2024abcdefsales@example.com'],
    ['prvs=0123abc123=2024abcdefsales@example.com', '2024abcdefsales@example.com'],
    ['prvs=sales2024abcdef=0123abc123@example.com', 'sales2024abcdef@example.com'],
    [
      'SRS0=a=b=d1.example=SRS0=a=b=d2.example=SRS0=a=b=d3.example=SRS0=a=b=d4.example=alice@fw.example',
      'srs0=a=b=d4.example=alice@d3.example',
    ],
  ]
  for (const [got, want] of cases) t.equal(normalizeSender(got), want, JSON.stringify(got))
})

t.test('addressToALabels: the domain after the last @ only', async (t) => {
  t.equal(addressToALabels('Jörg@Bücher.example'), 'Jörg@xn--bcher-kva.example')
  t.equal(addressToALabels('bücher'), 'bücher', 'no @: no domain to convert')
  t.equal(addressToALabels('a@b@bücher.example'), 'a@b@xn--bcher-kva.example')
})
