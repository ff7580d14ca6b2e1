package isoclip_test

import (
	"fmt"
	"log"
	"math"
	"os"

	isoclip "github.com/isoclip/isoclip/bindings/go"
)

// Load a projector file and move image features into the IsoCLIP space. (README example; the
// test suite runs it with ISOCLIP_PROJECTOR set to a file from `isoclip fit -o FILE`.)
func Example() {
	p, err := isoclip.Load(os.Getenv("ISOCLIP_PROJECTOR"))
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()

	dIn, _ := p.InputDim(isoclip.ModalityAuto, isoclip.InputFeatures)
	dOut, _ := p.OutputDim(isoclip.ModalityAuto, isoclip.FormCompact)
	fmt.Printf("features %d -> compact %d\n", dIn, dOut)

	features := make([]float32, 2*dIn) // two rows of pre-projection image features
	for i := range features {
		features[i] = float32(math.Sin(float64(i)))
	}
	out := make([]float32, 2*dOut)
	if _, err := p.ProjectFloat32(features, out, isoclip.ProjectOptions{}); err != nil {
		log.Fatal(err)
	}
	norm := 0.0
	for _, v := range out[:dOut] {
		norm += float64(v) * float64(v)
	}
	fmt.Printf("row 0 has unit norm: %v\n", math.Abs(norm-1) < 1e-5)

	// Output:
	// features 768 -> compact 262
	// row 0 has unit norm: true
}
