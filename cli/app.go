package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
)

// Version is the qchain version, set at build time with -ldflags.
var Version = "dev"

// exitError carries a process exit code with an optional message.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return ""
	}
	return e.err.Error()
}

func exitCode(code int, err error) error { return &exitError{code: code, err: err} }

// NewApp builds the qchain command tree writing to stdout and stderr.
func NewApp(stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:                   "qchain",
		Usage:                  "inspect and manage qcow2 image chains and snapshots without libvirt",
		Version:                Version,
		Writer:                 stdout,
		ErrWriter:              stderr,
		HideHelpCommand:        true,
		UseShortOptionHandling: true,
		ExitErrHandler:         func(*cli.Context, error) {},
		OnUsageError:           usageError,
		Commands: []*cli.Command{
			infoCommand(),
			mapCommand(),
			checkCommand(),
			compareCommand(),
			exportCommand(),
			layersCommand(),
			clustersCommand(),
			dumpCommand(),
			leaksCommand(),
			diffCommand(),
			whoUsesCommand(),
			createCommand(),
			rebaseCommand(),
			bitmapCommand(),
			imageSnapshotCommand(),
			backupCommand(),
		},
	}
	app.Commands = append(app.Commands, blockCommands()...)
	app.Commands = append(app.Commands, snapshotCommands()...)
	for _, cmd := range app.Commands {
		cmd.OnUsageError = usageError
	}
	return app
}

// Run runs the command line and returns the process exit code. Errors are
// printed as one line on stderr.
func Run(args []string, stdout, stderr io.Writer) int {
	if f, ok := stdout.(*os.File); ok {
		growPipe(f)
	}
	app := NewApp(stdout, stderr)
	err := app.Run(args)
	if err == nil {
		return 0
	}
	code := 1
	var ee *exitError
	if errors.As(err, &ee) {
		code = ee.code
		err = ee.err
	}
	if err != nil {
		msg := strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", " ")
		fmt.Fprintf(stderr, "qchain: %s\n", msg)
	}
	return code
}

func jsonIndent(v any) ([]byte, error) {
	b, err := json.MarshalIndent(v, "  ", "  ")
	if err != nil {
		return nil, err
	}
	return append(append([]byte("  "), b...), '\n'), nil
}

// usageError keeps usage errors to one line (urfave prints the whole help
// otherwise).
func usageError(c *cli.Context, err error, _ bool) error {
	return err
}
