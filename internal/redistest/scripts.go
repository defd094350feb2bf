package redistest

import (
	"fmt"
	"os"
	"regexp"
)

// ForeignScript returns the text of the Lua script that the TypeScript or
// Python source at path assigns to name (const NAME = `...` or
// NAME = """..."""), for tests that hold the copies of the TypeScript and
// Python replicas to the Go replica's: the same text, so the same SHA, and
// the same behaviour on the same keys.
func ForeignScript(path, name string) (string, error) {
	src, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	q := regexp.QuoteMeta(name)
	re := regexp.MustCompile(`(?s)(?:const ` + q + " = `(.*?)`" + `|\n` + q + ` = """(.*?)""")`)
	m := re.FindSubmatch(src)
	if m == nil {
		return "", fmt.Errorf("no script %s in %s", name, path)
	}
	return string(m[1]) + string(m[2]), nil
}
