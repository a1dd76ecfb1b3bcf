package config

import (
	"fmt"
	"os"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

// envRef matches ${VAR} and ${VAR:-default}; $${ is a literal ${.
var envRef = regexp.MustCompile(`\$?\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)

// expandEnv replaces every ${VAR} and ${VAR:-default} in the values of
// the document with the variable's value (the default when VAR is unset or
// empty), before the values are decoded, so `window: ${WINDOW:-128}` is a
// number. Keys and comments are left alone. A variable that is unset and
// has no default is a Problem that names it.
func expandEnv(n *yaml.Node) Problems {
	if n == nil {
		return nil
	}
	var ps Problems
	if n.Kind == yaml.ScalarNode && strings.Contains(n.Value, "${") {
		n.Value = envRef.ReplaceAllStringFunc(n.Value, func(ref string) string {
			if strings.HasPrefix(ref, "$$") {
				return ref[1:] // escaped: the literal ${…}
			}
			m := envRef.FindStringSubmatch(ref)
			name, hasDefault, def := m[1], m[2] != "", m[3]
			if v, ok := os.LookupEnv(name); ok && (v != "" || !hasDefault) {
				return v
			}
			if hasDefault {
				return def
			}
			ps = append(ps, Problem{Line: n.Line, Msg: fmt.Sprintf("environment variable %s is not set and has no default (write ${%s:-default})", name, name)})
			return ""
		})
		if n.Style == 0 {
			n.Tag = "" // a plain scalar: its type follows the expanded value
		}
		return ps
	}
	for i, c := range n.Content {
		if n.Kind == yaml.MappingNode && i%2 == 0 {
			continue // a key
		}
		ps = append(ps, expandEnv(c)...)
	}
	return ps
}
