//! The attribute's parse tests, named as sentences (`should::reject_negative_eps`).

use quote::quote;

use super::*;
use robust_spec::suggest::edit_distance;
use robust_spec::{Options, Scope};

const ALL_KEYS: &str = "`attack`, `perturbation`, `certify`, `eps`, `radius`, `crate`, `norm`, `steps`, `step_size`, `restarts`, `random_start`, `targeted`, `loss`, `target_classes`, `queries`, `p_init`, `rescale_schedule`, `version`, `attacks`, `kappa`, `binary_search_steps`, `initial_const`, `learning_rate`, `overshoot`, `sigma`, `pixels`, `max_brightness`, `max_contrast`, `max_shift`, `max_degrees`, `patch`, `timeout`, `min_certified_acc`, `n0`, `n`, `alpha`, `cases`, `min_acc`, `max_drop`, `min_invariance`, `samples`, `batch_size`, `seed`, `device`, `precision`, `masking_checks`, `confidence`, `baseline`, `tolerance`";

fn spec(tokens: TokenStream) -> Spec {
    parse(tokens).unwrap_or_else(|e| panic!("unexpected error: {e}"))
}

/// Every message the tokens produce, in order.
fn errors(tokens: TokenStream) -> Vec<String> {
    match parse(tokens) {
        Ok(spec) => panic!("expected errors, parsed {:?}", names(&spec)),
        Err(error) => error.into_iter().map(|e| e.to_string()).collect(),
    }
}

/// The one message the tokens produce.
fn error(tokens: TokenStream) -> String {
    let mut all = errors(tokens);
    assert_eq!(all.len(), 1, "expected exactly one error, got {all:#?}");
    all.remove(0)
}

fn eps(spec: &Spec) -> Vec<f64> {
    spec.eps
        .iter()
        .chain(&spec.radius)
        .map(|e| e.value)
        .collect()
}

/// The first scope of `key` in the key table.
fn scope(key: &str) -> Scope {
    robust_spec::key(key).expect("a key of the table").scopes[0]
}

fn names(spec: &Spec) -> Vec<String> {
    spec.cases().into_iter().map(|case| case.name).collect()
}

#[test]
fn name_certification_tests_by_certifier_and_radius() {
    let spec = spec(quote!(
        certify = ["ibp", "crown", "smoothing"],
        eps = [0.05, 0.1],
        radius = 0.5,
        sigma = 0.25,
        min_certified_acc = 0.8
    ));
    assert_eq!(
        names(&spec),
        [
            "ibp_eps_0_05",
            "ibp_eps_0_1",
            "crown_eps_0_05",
            "crown_eps_0_1",
            "smoothing_radius_0_5"
        ]
    );
    assert_eq!(eps(&spec), [0.05, 0.1, 0.5]);
    assert_eq!(spec.options.sigma, Some(0.25));
}

#[test]
fn reject_a_certification_test_without_its_threshold() {
    let message = error(quote!(certify = "ibp", eps = 0.1));
    assert!(message.contains("missing `min_certified_acc`"), "{message}");
}

#[test]
fn parse_a_single_attack_and_eps() {
    let spec = spec(quote!(attack = "pgd", eps = 0.1, min_acc = 0.5));
    assert_eq!(names(&spec), ["pgd_eps_0_1"]);
    assert_eq!(eps(&spec), [0.1]);
    assert_eq!(spec.options.min_acc, Some(0.5));
    assert!(spec.krate.is_none());
}

#[test]
fn generate_one_case_per_attack_and_eps_attack_major() {
    let spec = spec(quote!(
        attack = ["fgsm", "pgd"],
        eps = [0.05, 0.1],
        max_drop = 0.2,
    ));
    assert_eq!(
        names(&spec),
        [
            "fgsm_eps_0_05",
            "fgsm_eps_0_1",
            "pgd_eps_0_05",
            "pgd_eps_0_1"
        ]
    );
}

#[test]
fn name_tests_after_the_digits_as_written() {
    let spec = spec(quote!(
        attack = "pgd",
        eps = [1, 8e-3, 0.25f64, 1_0.5, 2E+1],
        min_acc = 0
    ));
    assert_eq!(
        names(&spec),
        [
            "pgd_eps_1",
            "pgd_eps_8e_3",
            "pgd_eps_0_25",
            "pgd_eps_10_5",
            "pgd_eps_2e1"
        ]
    );
    assert_eq!(eps(&spec), [1.0, 0.008, 0.25, 10.5, 20.0]);
}

#[test]
fn reject_a_tolerance_when_the_baseline_is_off() {
    assert_eq!(
        error(quote!(
            attack = "pgd",
            eps = 0.1,
            min_acc = 0.5,
            baseline = false,
            tolerance = 0.02
        )),
        "`tolerance` is how far a metric may fall below its baseline, but `baseline = false` \
         turns the baseline off: drop one of them"
    );
}

#[test]
fn reject_a_confidence_level_outside_the_open_unit_interval() {
    assert_eq!(
        error(quote!(
            attack = "cw",
            eps = 0.1,
            min_acc = 0.5,
            confidence = 0.0
        )),
        "`confidence` is the confidence level of the assertions, in (0, 1) (e.g. 0.95), \
         found `0.0`; C&W's logit margin κ is `kappa`"
    );
}

#[test]
fn accept_every_option_with_its_type() {
    let spec = spec(quote!(
        attack = ["pgd", "square", "autoattack"],
        eps = 0.1,
        norm = "l2",
        steps = 40,
        step_size = 0.01,
        restarts = 2,
        random_start = true,
        targeted = false,
        loss = "cw",
        target_classes = 9,
        queries = 100,
        p_init = 0.5,
        rescale_schedule = false,
        version = "custom",
        attacks = ["fab-t", "square"],
        kappa = 0.0,
        binary_search_steps = 3,
        initial_const = 0.1,
        learning_rate = 0.05,
        overshoot = 0.02,
        min_acc = 1,
        max_drop = 0.0,
        samples = 500usize,
        batch_size = 64,
        seed = 18446744073709551615,
        device = "auto",
        precision = "tf32",
        masking_checks = "warn",
        confidence = 0.95,
        baseline = true,
        tolerance = 0.02,
    ));
    let o = &spec.options;
    assert_eq!(o.norm, Some("l2"));
    assert_eq!(o.steps, Some(40));
    assert_eq!(o.step_size, Some(0.01));
    assert_eq!(o.restarts, Some(2));
    assert_eq!(o.random_start, Some(true));
    assert_eq!(o.targeted, Some(false));
    assert_eq!(o.loss, Some("cw"));
    assert_eq!(o.target_classes, Some(9));
    assert_eq!(o.queries, Some(100));
    assert_eq!(o.p_init, Some(0.5));
    assert_eq!(o.rescale_schedule, Some(false));
    assert_eq!(o.version, Some("custom"));
    assert_eq!(o.attacks, Some(&["fab-t", "square"][..]));
    assert_eq!(o.kappa, Some(0.0));
    assert_eq!(o.binary_search_steps, Some(3));
    assert_eq!(o.initial_const, Some(0.1));
    assert_eq!(o.learning_rate, Some(0.05));
    assert_eq!(o.overshoot, Some(0.02));
    assert_eq!(o.min_acc, Some(1.0));
    assert_eq!(o.max_drop, Some(0.0));
    assert_eq!(o.samples, Some(500));
    assert_eq!(o.batch_size, Some(64));
    assert_eq!(o.seed, Some(u64::MAX));
    assert_eq!(o.device, Some("auto"));
    assert_eq!(o.precision, Some("tf32"));
    assert_eq!(o.masking_checks, Some("warn"));
    assert_eq!(
        (o.confidence, o.baseline, o.tolerance),
        (Some(0.95), Some(true), Some(0.02))
    );
    // Every option of attack tests was written above, so every one must come back as a
    // builder call.
    let written: Vec<&str> = o.written().into_iter().map(|(key, _)| key).collect();
    let expected: Vec<&str> = Options::KEYS
        .iter()
        .copied()
        .filter(|k| matches!(scope(k), Scope::Attack | Scope::Any))
        .collect();
    assert_eq!(written, expected);
}

#[test]
fn accept_every_perturbation_option_with_its_type() {
    let spec = spec(quote!(
        perturbation = [
            "linf",
            "gaussian",
            "salt_pepper",
            "brightness",
            "contrast",
            "shift+rotation",
            "occlusion"
        ],
        eps = 0.05,
        sigma = 0.1,
        pixels = 10,
        max_brightness = 0.2,
        max_contrast = 0.3,
        max_shift = 2,
        max_degrees = 15.0,
        patch = 6,
        cases = 256,
        min_invariance = 0.99,
        samples = 100,
        batch_size = 512,
        seed = 3,
        device = "cpu",
        precision = "tf32",
        confidence = 0.99,
        baseline = false,
    ));
    let o = &spec.options;
    assert_eq!(eps(&spec), [0.05]);
    assert_eq!(
        (o.sigma, o.pixels, o.max_brightness, o.max_contrast),
        (Some(0.1), Some(10), Some(0.2), Some(0.3))
    );
    assert_eq!(
        (
            o.max_shift,
            o.max_degrees,
            o.patch,
            o.cases,
            o.min_invariance
        ),
        (Some(2.0), Some(15.0), Some(6), Some(256), Some(0.99))
    );
    let written: Vec<&str> = o.written().into_iter().map(|(key, _)| key).collect();
    let expected: Vec<&str> = Options::KEYS
        .iter()
        .copied()
        .filter(|k| !matches!(scope(k), Scope::Attack | Scope::Certify | Scope::Smoothing))
        // `tolerance` with `baseline = false` is an error of its own (tested below).
        .filter(|k| *k != "tolerance")
        .collect();
    assert_eq!(written, expected);
    assert_eq!(
        names(&spec),
        [
            "linf",
            "gaussian",
            "salt_pepper",
            "brightness",
            "contrast",
            "shift_rotation",
            "occlusion"
        ]
    );
}

#[test]
fn name_a_perturbation_test_after_the_perturbation() {
    let spec = spec(quote!(perturbation = "rotation", min_invariance = 0.9));
    assert_eq!(names(&spec), ["rotation"]);
    assert!(eps(&spec).is_empty());
}

#[test]
fn suggest_the_closest_perturbation_in_a_composition() {
    assert_eq!(
        error(quote!(
            perturbation = "rotation+brightnes",
            min_invariance = 0.9
        )),
        "unknown perturbation `brightnes`; did you mean `brightness`?"
    );
    assert_eq!(
        error(quote!(perturbation = "blur", min_invariance = 0.9)),
        "unknown perturbation `blur`; expected one of `linf`, `l2`, `gaussian`, \
         `salt_pepper`, `brightness`, `contrast`, `shift`, `rotation`, `occlusion`"
    );
}

#[test]
fn reject_a_family_twice_in_a_composition_and_a_perturbation_listed_twice() {
    assert_eq!(
        error(quote!(perturbation = "shift+shift", min_invariance = 0.9)),
        "perturbation `shift` appears twice in `shift+shift`"
    );
    assert_eq!(
        error(quote!(
            perturbation = ["rotation", "shift", "rotation"],
            min_invariance = 0.9
        )),
        "perturbation `rotation` is listed twice, so its test would be generated twice"
    );
}

#[test]
fn reject_parameters_of_another_perturbation() {
    assert_eq!(
        error(quote!(
            perturbation = ["rotation", "shift"],
            sigma = 0.1,
            min_invariance = 0.9
        )),
        "`sigma` does not apply to `rotation` or `shift`: it is a parameter of `gaussian`"
    );
    assert_eq!(
        error(quote!(
            perturbation = "rotation",
            eps = 0.1,
            min_invariance = 0.9
        )),
        "`eps` does not apply to `rotation`: it is a parameter of `linf` or `l2`"
    );
}

#[test]
fn accept_a_parameter_used_by_one_perturbation_of_the_list() {
    let spec = spec(quote!(
        perturbation = ["rotation", "gaussian+brightness"],
        sigma = 0.2,
        min_invariance = 0.9
    ));
    assert_eq!(spec.options.sigma, Some(0.2));
}

#[test]
fn reject_keys_of_the_other_kind_of_test() {
    assert_eq!(
        errors(quote!(
            perturbation = "rotation",
            steps = 10,
            min_acc = 0.5,
            min_invariance = 0.9
        )),
        [
            "`steps` is a parameter of attack tests; a perturbation test \
             (`perturbation = ...`) does not use it",
            "`min_acc` is a parameter of attack tests; a perturbation test \
             (`perturbation = ...`) does not use it",
        ]
    );
    assert_eq!(
        errors(quote!(
            attack = "pgd",
            eps = 0.1,
            min_acc = 0.5,
            cases = 10,
            max_degrees = 5
        )),
        [
            "`cases` is a parameter of perturbation tests; an attack test (`attack = ...`) \
             does not use it",
            "`max_degrees` is a parameter of the `rotation` perturbation; an attack test \
             (`attack = ...`) does not use it",
        ]
    );
}

#[test]
fn reject_attack_and_perturbation_together() {
    let message = error(quote!(
        attack = "pgd",
        perturbation = "rotation",
        min_invariance = 0.9
    ));
    assert!(
        message.starts_with("`attack` and `perturbation` cannot be combined"),
        "{message}"
    );
}

#[test]
fn require_min_invariance_in_a_perturbation_test() {
    let message = error(quote!(perturbation = "rotation", cases = 10));
    assert!(message.starts_with("missing `min_invariance`"), "{message}");
}

#[test]
fn reject_perturbation_parameters_out_of_range() {
    assert_eq!(
        errors(quote!(
            perturbation = ["rotation", "contrast", "occlusion", "linf"],
            max_degrees = 270,
            max_contrast = 1.0,
            patch = 0,
            eps = [0.1, 0.2],
            min_invariance = 0.9
        )),
        [
            "`max_degrees` must be in (0, 180], found `270`",
            "`max_contrast` must be in (0, 1), found `1`",
            "expected an integer ≥ 1 for `patch`, found `0`",
            "`eps` takes one value in a perturbation test: it is the radius of `linf` and \
             `l2` noise",
        ]
    );
}

#[test]
fn emit_only_the_options_written() {
    let spec = spec(quote!(attack = "pgd", eps = 0.1, min_acc = 0.5, seed = 7));
    let written: Vec<&str> = spec.options.written().into_iter().map(|(k, _)| k).collect();
    assert_eq!(written, ["min_acc", "seed"]);
}

#[test]
fn read_the_crate_path() {
    let spec = spec(quote!(
        attack = "pgd",
        eps = 0.1,
        min_acc = 0.5,
        crate = "::my::rt"
    ));
    let path = spec.krate.expect("crate is set");
    assert_eq!(path.to_token_stream().to_string(), ":: my :: rt");
}

#[test]
fn reject_a_crate_that_is_not_a_path() {
    let message = error(quote!(
        attack = "pgd",
        eps = 0.1,
        min_acc = 0.5,
        crate = "my rt"
    ));
    assert!(message.starts_with("`crate` must be a path"), "{message}");
}

#[test]
fn reject_negative_eps() {
    assert_eq!(
        error(quote!(attack = "pgd", eps = -0.1, min_acc = 0.5)),
        "`eps` must be greater than 0, found `-0.1`"
    );
}

#[test]
fn reject_zero_eps() {
    assert_eq!(
        error(quote!(attack = "pgd", eps = [0.1, 0], min_acc = 0.5)),
        "`eps` must be greater than 0, found `0`"
    );
}

#[test]
fn reject_infinite_eps() {
    assert_eq!(
        error(quote!(attack = "pgd", eps = 1e999, min_acc = 0.5)),
        "`eps` must be finite, found `1e999`"
    );
}

#[test]
fn reject_quoted_eps_and_say_how_to_fix_it() {
    assert_eq!(
        error(quote!(attack = "pgd", eps = "0.1", min_acc = 0.5)),
        "expected a number for `eps`, found the string \"0.1\"; remove the quotes: `eps = 0.1`"
    );
}

#[test]
fn reject_expressions_for_numbers() {
    assert_eq!(
        error(quote!(attack = "pgd", eps = 8.0 / 255.0, min_acc = 0.5)),
        "expected a number for `eps`, found an expression (only literals are accepted)"
    );
}

#[test]
fn reject_unknown_number_suffixes() {
    assert_eq!(
        error(quote!(attack = "pgd", eps = 0.1f16, min_acc = 0.5)),
        "unexpected suffix `f16` on `eps`: write a plain number"
    );
}

#[test]
fn reject_fractional_steps() {
    assert_eq!(
        error(quote!(
            attack = "pgd",
            eps = 0.1,
            min_acc = 0.5,
            steps = 1.5
        )),
        "expected an integer ≥ 1 for `steps`, found `1.5`"
    );
}

#[test]
fn reject_zero_and_negative_counts() {
    assert_eq!(
        errors(quote!(
            attack = "pgd",
            eps = 0.1,
            min_acc = 0.5,
            samples = 0,
            restarts = -2
        )),
        [
            "expected an integer ≥ 1 for `samples`, found `0`",
            "expected an integer ≥ 1 for `restarts`, found `-2`"
        ]
    );
}

#[test]
fn reject_seeds_beyond_u64() {
    assert_eq!(
        error(quote!(
            attack = "pgd",
            eps = 0.1,
            min_acc = 0.5,
            seed = 18446744073709551616
        )),
        "`seed` is too large, found `18446744073709551616`"
    );
}

#[test]
fn reject_an_integer_for_a_bool() {
    assert_eq!(
        error(quote!(
            attack = "pgd",
            eps = 0.1,
            min_acc = 0.5,
            targeted = 1
        )),
        "expected `true` or `false` for `targeted`, found `1`"
    );
}

#[test]
fn reject_a_quoted_bool_and_say_how_to_fix_it() {
    assert_eq!(
        error(quote!(
            attack = "pgd",
            eps = 0.1,
            min_acc = 0.5,
            random_start = "true"
        )),
        "expected `true` or `false` for `random_start`, found the string \"true\"; remove \
         the quotes: `random_start = true`"
    );
}

#[test]
fn reject_min_acc_above_one_and_suggest_the_fraction() {
    assert_eq!(
        error(quote!(attack = "pgd", eps = 0.1, min_acc = 60)),
        "`min_acc` must be between 0 and 1, found `60`; it is a fraction, so 60% is \
         `min_acc = 0.6`"
    );
}

#[test]
fn reject_negative_max_drop() {
    assert_eq!(
        error(quote!(attack = "pgd", eps = 0.1, max_drop = -0.1)),
        "`max_drop` must be between 0 and 1, found `-0.1`"
    );
}

#[test]
fn suggest_the_closest_key() {
    assert_eq!(
        error(quote!(attack = "pgd", epss = 0.1, eps = 0.1, min_acc = 0.5)),
        "unknown key `epss`; did you mean `eps`?"
    );
    assert_eq!(
        error(quote!(
            attack = "pgd",
            epsilon = 0.1,
            eps = 0.1,
            min_acc = 0.5
        )),
        "unknown key `epsilon`; did you mean `eps`?"
    );
    assert_eq!(
        error(quote!(
            attack = "pgd",
            eps = 0.1,
            min_acc = 0.5,
            stepsize = 0.01
        )),
        "unknown key `stepsize`; did you mean `step_size`?"
    );
}

#[test]
fn list_the_keys_when_none_is_close() {
    assert_eq!(
        error(quote!(attack = "pgd", eps = 0.1, min_acc = 0.5, budget = 1)),
        format!("unknown key `budget`; expected one of {ALL_KEYS}")
    );
}

#[test]
fn a_custom_autoattack_lists_its_members_and_nothing_else_does() {
    let s = spec(quote!(
        attack = "autoattack",
        eps = 0.1,
        min_acc = 0.5,
        version = "custom",
        attacks = ["apgd-ce", "square"]
    ));
    assert_eq!(s.options.attacks, Some(&["apgd-ce", "square"][..]));
    assert_eq!(
        error(quote!(
            attack = "autoattack",
            eps = 0.1,
            min_acc = 0.5,
            version = "custom"
        )),
        "`version = \"custom\"` runs the members listed in `attacks`, which is missing; \
         expected e.g. `attacks = [\"apgd-ce\", \"square\"]`"
    );
    assert_eq!(
        error(quote!(
            attack = "autoattack",
            eps = 0.1,
            min_acc = 0.5,
            attacks = ["square"]
        )),
        "`attacks` lists the members of a custom AutoAttack; it needs `version = \"custom\"` \
         (the standard version has its own members)"
    );
    assert_eq!(
        error(quote!(
            attack = "autoattack",
            eps = 0.1,
            min_acc = 0.5,
            version = "custom",
            attacks = ["apgd-ce", "sqare"]
        )),
        "unknown AutoAttack member `sqare`; did you mean `square`?"
    );
}

#[test]
fn suggest_the_closest_attack() {
    assert_eq!(
        error(quote!(attack = ["fgsm", "pdg"], eps = 0.1, min_acc = 0.5)),
        "unknown attack `pdg`; did you mean `pgd`?"
    );
    assert_eq!(
        error(quote!(attack = "FGSM", eps = 0.1, min_acc = 0.5)),
        "unknown attack `FGSM`; did you mean `fgsm`?"
    );
}

#[test]
fn list_the_attacks_when_none_is_close() {
    assert_eq!(
        error(quote!(attack = "boundary", eps = 0.1, min_acc = 0.5)),
        "unknown attack `boundary`; expected one of `fgsm`, `pgd`, `apgd`, `apgd-t`, `autoattack`, `square`, `cw`, `deepfool`, `fab`, `fab-t`"
    );
}

#[test]
fn reject_unknown_norms_losses_and_devices() {
    assert_eq!(
        errors(quote!(
            attack = "pgd",
            eps = 0.1,
            min_acc = 0.5,
            norm = "linfty",
            loss = "mse",
            device = "metal",
        )),
        [
            "unknown norm `linfty`; did you mean `linf`?",
            "unknown loss `mse`; expected one of `ce`, `cw`, `dlr`",
            "unknown device `metal`; expected one of `cpu`, `cuda`, `auto`",
        ]
    );
}

#[test]
fn not_mistake_another_norm_for_a_typo() {
    assert_eq!(
        error(quote!(
            attack = "pgd",
            eps = 0.1,
            min_acc = 0.5,
            norm = "l1"
        )),
        "unknown norm `l1`; expected one of `linf`, `l2`"
    );
}

#[test]
fn reject_an_unquoted_choice_and_say_how_to_fix_it() {
    assert_eq!(
        error(quote!(
            attack = "pgd",
            eps = 0.1,
            min_acc = 0.5,
            norm = linf
        )),
        "expected a string for `norm`, found `linf`; add quotes: `norm = \"linf\"`"
    );
}

#[test]
fn reject_a_list_where_one_value_is_expected() {
    assert_eq!(
        error(quote!(attack = "pgd", eps = 0.1, min_acc = [0.5, 0.6])),
        "expected a number for `min_acc`, found a list (only `attack`, `perturbation` and `eps` take lists)"
    );
}

#[test]
fn reject_empty_lists() {
    assert_eq!(
        errors(quote!(attack = [], eps = [], min_acc = 0.5)),
        [
            "`attack` needs at least one value",
            "`eps` needs at least one value"
        ]
    );
}

#[test]
fn reject_a_duplicate_key() {
    assert_eq!(
        error(quote!(attack = "pgd", eps = 0.1, min_acc = 0.5, eps = 0.2)),
        "duplicate key `eps`"
    );
}

#[test]
fn require_attack_and_eps() {
    let all = errors(quote!(min_acc = 0.5));
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(
        all[0].starts_with("missing `attack`, `perturbation` or `certify`"),
        "{}",
        all[0]
    );
    assert!(all[0].contains("`rotation`"), "{}", all[0]);
    assert!(error(quote!(attack = "pgd", min_acc = 0.5)).starts_with("missing `eps`"));
}

#[test]
fn not_report_a_missing_key_that_a_typo_was_meant_to_be() {
    assert_eq!(
        errors(quote!(attack = "pgd", epss = 0.1, min_accc = 0.5)),
        [
            "unknown key `epss`; did you mean `eps`?",
            "unknown key `min_accc`; did you mean `min_acc`?"
        ]
    );
}

#[test]
fn give_the_percentage_hint_only_for_whole_numbers() {
    assert_eq!(
        error(quote!(attack = "pgd", eps = 0.1, min_acc = 1.5)),
        "`min_acc` must be between 0 and 1, found `1.5`"
    );
}

#[test]
fn require_something_to_assert() {
    let message = error(quote!(attack = "pgd", eps = 0.1, samples = 100));
    assert!(
        message.starts_with("missing `min_acc` or `max_drop`"),
        "{message}"
    );
}

#[test]
fn not_report_a_missing_key_that_was_written_wrongly() {
    assert_eq!(
        error(quote!(attack = "pgd", eps = 0.1, min_acc = 2)),
        "`min_acc` must be between 0 and 1, found `2`; it is a fraction, so 2% is \
         `min_acc = 0.02`"
    );
}

#[test]
fn reject_an_attack_listed_twice() {
    assert_eq!(
        error(quote!(
            attack = ["pgd", "fgsm", "pgd"],
            eps = 0.1,
            min_acc = 0.5
        )),
        "attack `pgd` is listed twice, so its `pgd_eps_*` tests would be generated twice"
    );
}

#[test]
fn reject_the_same_eps_written_twice() {
    assert_eq!(
        error(quote!(attack = "pgd", eps = [0.1, 0.10], min_acc = 0.5)),
        "eps `0.10` is the same value as `0.1`, listed before, so its tests would be \
         generated twice"
    );
}

#[test]
fn report_every_error_at_once() {
    let all = errors(quote!(
        attack = "pgm",
        eps = [-0.1, "0.2"],
        steps = 0,
        targeted = 1,
        colour = "red",
    ));
    assert_eq!(
        all,
        [
            "unknown attack `pgm`; did you mean `pgd`?",
            "`eps` must be greater than 0, found `-0.1`",
            "expected a number for `eps`, found the string \"0.2\"; remove the quotes: \
             `eps = 0.2`",
            "expected an integer ≥ 1 for `steps`, found `0`",
            "expected `true` or `false` for `targeted`, found `1`",
            &format!("unknown key `colour`; expected one of {ALL_KEYS}"),
            "missing `min_acc` or `max_drop`: a robustness test needs something to assert, \
             the lowest acceptable robust accuracy (`min_acc = 0.6`) and/or the largest \
             acceptable drop from clean accuracy (`max_drop = 0.2`)",
        ]
    );
}

#[test]
fn reject_a_key_without_a_value() {
    assert_eq!(
        error(quote!(attack = "pgd", eps = 0.1, min_acc = 0.5, targeted)),
        "expected `targeted = value`"
    );
}

#[test]
fn count_a_swap_of_neighbours_as_one_edit() {
    assert_eq!(edit_distance("pdg", "pgd"), 1);
    assert_eq!(edit_distance("epss", "eps"), 1);
    assert_eq!(edit_distance("", "abc"), 3);
    assert_eq!(edit_distance("kitten", "sitting"), 3);
}
