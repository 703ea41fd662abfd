package chain

// StepHook is the tests' step hook: every Manager a test makes calls it
// through testHook before each journal step.
var StepHook func(op string, index int, s Step)

func testHook(op string, index int, s Step) {
	if StepHook != nil {
		StepHook(op, index, s)
	}
}
