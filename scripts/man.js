#!/usr/bin/env node
// npm run man: regenerate the KEYS section of man/policyd-ts.conf.5 from lib/config.ts.
'use strict'
const fs = require('node:fs')
const path = require('node:path')
const { withKeys } = require('../dist/lib/config-man.js')
const page = path.join(__dirname, '..', 'man', 'policyd-ts.conf.5')
fs.writeFileSync(page, withKeys(fs.readFileSync(page, 'utf8')))
