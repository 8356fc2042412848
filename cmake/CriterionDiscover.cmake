# ep_criterion_discover(target): registers the Criterion executable with ctest.
function(ep_criterion_discover target)
  add_test(NAME ${target} COMMAND ${target})
endfunction()
