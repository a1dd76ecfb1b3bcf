package config

import (
	"cmp"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Problem is one thing wrong in a configuration.
type Problem struct {
	// Line in the file, 0 when the key is not in the file (a default or a
	// combination of keys is wrong).
	Line int
	// Key is the dotted path of the setting, e.g. "mqtt.max_payload".
	Key string
	Msg string
}

func (p Problem) String() string {
	s := p.Msg
	if p.Key != "" {
		s = p.Key + ": " + s
	}
	if p.Line > 0 {
		s = fmt.Sprintf("line %d: %s", p.Line, s)
	}
	return s
}

// Problems is every problem found, as an error: one line each, in file
// order.
type Problems []Problem

func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

func (ps Problems) sorted() Problems {
	slices.SortStableFunc(ps, func(a, b Problem) int {
		// Problems without a line (defaults, combinations) come last.
		al, bl := a.Line, b.Line
		if al == 0 {
			al = 1 << 30
		}
		if bl == 0 {
			bl = 1 << 30
		}
		return cmp.Or(cmp.Compare(al, bl), strings.Compare(a.Key, b.Key))
	})
	return ps
}

// lineOf returns the line of the dotted key in the document, or of its
// closest ancestor that is there; 0 if none is.
func lineOf(doc *yaml.Node, key string) int {
	n := doc
	if n != nil && n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	line := 0
	for _, part := range strings.Split(key, ".") {
		if n == nil || n.Kind != yaml.MappingNode {
			return line
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == part {
				line, next = n.Content[i].Line, n.Content[i+1]
				break
			}
		}
		if next == nil {
			return line
		}
		n = next
	}
	return line
}

// unknownKeys lists the keys of the mapping n that t (a struct) has no
// field for, recursing into nested structs, each with a guess at the key
// meant.
func unknownKeys(n *yaml.Node, t reflect.Type, path string) Problems {
	if n == nil || n.Kind != yaml.MappingNode || t.Kind() != reflect.Struct {
		return nil
	}
	fields := map[string]reflect.Type{}
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name != "" && name != "-" {
			fields[name] = t.Field(i).Type
		}
	}
	var ps Problems
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		ft, ok := fields[k.Value]
		if !ok {
			msg := "unknown key"
			if guess := closest(k.Value, fields); guess != "" {
				msg += fmt.Sprintf("; did you mean %q?", guess)
			}
			ps = append(ps, Problem{Line: k.Line, Key: path + k.Value, Msg: msg})
			continue
		}
		ps = append(ps, unknownKeys(v, ft, path+k.Value+".")...)
	}
	return ps
}

// closest is the known key nearest to key (at most a third of it edited),
// or "".
func closest(key string, known map[string]reflect.Type) string {
	best, bestD := "", len(key)/3+1
	for k := range known {
		if d := editDistance(key, k); d < bestD || (d == bestD && k < best) {
			best, bestD = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// yamlLine matches the "line N: " prefix of yaml.v3's type errors.
var yamlLine = regexp.MustCompile(`^line (\d+): (.*)$`)

// typeProblems turns the errors of a yaml.TypeError into Problems, with
// the key of their line.
func typeProblems(doc *yaml.Node, te *yaml.TypeError) Problems {
	var ps Problems
	for _, e := range te.Errors {
		p := Problem{Msg: e}
		if m := yamlLine.FindStringSubmatch(e); m != nil {
			p.Line, _ = strconv.Atoi(m[1])
			p.Msg = m[2]
			p.Key = keyAt(doc, p.Line, "")
		}
		ps = append(ps, p)
	}
	return ps
}

// keyAt is the dotted path of the key (or the value) on line, or "".
func keyAt(n *yaml.Node, line int, path string) string {
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			if k := keyAt(c, line, path); k != "" {
				return k
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.Line == line || (v.Kind == yaml.ScalarNode && v.Line == line) {
				return path + k.Value
			}
			if found := keyAt(v, line, path+k.Value+"."); found != "" {
				return found
			}
		}
	}
	return ""
}
