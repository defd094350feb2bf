package wire

import "time"

// The commands the bus builds on its hot paths.

// XAdd starts c as an XADD to stream (NOMKSTREAM if noMkStream, MAXLEN
// ~ maxLen if above 0, id *); the caller appends the fields.
func (c *Cmd) XAdd(stream string, noMkStream bool, maxLen int64) {
	c.Arg("xadd")
	c.Arg(stream)
	c.XAddOptions(noMkStream, maxLen)
}

// XAddOptions appends what an XADD has between its key and its fields:
// NOMKSTREAM, MAXLEN ~ maxLen (if above 0) and the id, *.
func (c *Cmd) XAddOptions(noMkStream bool, maxLen int64) {
	if noMkStream {
		c.Arg("nomkstream")
	}
	if maxLen > 0 {
		c.Arg("maxlen")
		c.Arg("~")
		c.ArgInt(maxLen)
	}
	c.Arg("*")
}

// ReadTail appends what XREAD and XREADGROUP end with: COUNT count,
// BLOCK block (unless below 0), STREAMS key id.
func (c *Cmd) ReadTail(count int64, block time.Duration, key, id string) {
	c.Arg("count")
	c.ArgInt(count)
	if block >= 0 {
		c.Arg("block")
		c.ArgInt(block.Milliseconds())
	}
	c.Arg("streams")
	c.Arg(key)
	c.Arg(id)
}
