#!/bin/sh
# Runs every Go fuzz target of the module for a short time each.
set -e
t=${1:-10s}
for pkg in $(go list ./...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for f in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //'); do
    echo "fuzz: $pkg $f ($t)"
    go test -run "^$" -fuzz "^$f\$" -fuzztime "$t" -fuzzminimizetime 50x "$pkg"
  done
done
