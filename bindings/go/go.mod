module isoclip/bindings/go

go 1.19
