# Demo data: synthetic slides written in the real published formats, by a seeded generator.
# A sheet row whose paths lie under config demo.outdir is made here; name it {tissue}_demo.


rule demo_xenium_slide:
    output:
        experiment=f"{DEMO_DIR}/{{tissue}}_demo/outs/experiment.xenium",
        cells=f"{DEMO_DIR}/{{tissue}}_demo/outs/cells.parquet",
        matrix=f"{DEMO_DIR}/{{tissue}}_demo/outs/cell_feature_matrix.h5",
        clusters=f"{DEMO_DIR}/{{tissue}}_demo/outs/{CLUSTERS}",
        he_image=f"{DEMO_DIR}/{{tissue}}_demo/{{tissue}}_demo_he_image.ome.tif",
        he_alignment=f"{DEMO_DIR}/{{tissue}}_demo/{{tissue}}_demo_he_imagealignment.csv",
        pathology=f"{DEMO_DIR}/{{tissue}}_demo/pathology.csv",
        niche_truth=f"{DEMO_DIR}/{{tissue}}_demo/niche_truth.csv",
    log:
        f"{LOGS}/demo/xenium_{{tissue}}.log",
    benchmark:
        f"{BENCH}/demo/xenium_slide/{{tissue}}.tsv"
    wildcard_constraints:
        tissue="breast|lung|colon",
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=demo_slide_mem_mb,
        runtime=minutes(20),
    params:
        n_cells=config["demo"]["niche_cells"],
        seed=config["demo"]["seed"],
        outdir=lambda wildcards: f"{DEMO_DIR}/{wildcards.tissue}_demo",
    script:
        "../../scripts/demo_xenium_slide.py"


# The survival demo: a TCGA-like cohort and an external CPTAC-like one (see tissuekd.demo.survival).
# Rows of the survival sheets under demo.outdir/survival/{cohort}/ are made here.
DEMO_SURVIVAL = f"{DEMO_DIR}/survival/{{cohort}}"


rule demo_survival_slide:
    # run: inside Snakemake's process (profiles/default: force-use-threads), as survival_features:
    # 84 small slides, each of which took longer to start Python for than to write
    output:
        f"{DEMO_SURVIVAL}/slides/{{wsi}}.svs",
    log:
        f"{LOGS}/demo/survival_{{cohort}}/{{wsi}}.log",
    benchmark:
        f"{BENCH}/demo/survival_slide/{{cohort}}/{{wsi}}.tsv"
    wildcard_constraints:
        cohort="demo_tcga|demo_cptac",
    priority: CHAIN_PRIORITY
    resources:
        mem_mb=lambda wildcards, attempt: 1000 * attempt,
        runtime=minutes(10),
    params:
        patient=survival_slide_value("patient"),
        seed=config["demo"]["seed"],
    run:
        from tissuekd.demo.survival import DEMO_COHORTS, make_slide
        from tissuekd.logs import run_in_process

        shift = DEMO_COHORTS[wildcards.cohort]["stain_shift"]
        run_in_process(log[0], lambda: make_slide(output[0], params.patient, params.seed, shift))


rule demo_survival_tables:
    output:
        clinical=f"{DEMO_SURVIVAL}/clinical.tsv",
        rna=f"{DEMO_SURVIVAL}/rna.tsv",
        gene_sets=f"{DEMO_SURVIVAL}/programs.gmt",
    log:
        f"{LOGS}/demo/survival_{{cohort}}/tables.log",
    benchmark:
        f"{BENCH}/demo/survival_tables/{{cohort}}.tsv"
    wildcard_constraints:
        cohort="demo_tcga|demo_cptac",
    priority: CHAIN_PRIORITY
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 1000 * attempt,
        runtime=minutes(10),
    params:
        patients=lambda wildcards: sorted(
            set(SURVIVAL_SLIDES.loc[SURVIVAL_SLIDES["cohort"] == wildcards.cohort, "patient"])
        ),
        seed=config["demo"]["seed"],
    script:
        "../../scripts/demo_survival_tables.py"


# The segmentation demo: TissueNet-layout splits and a BBBC038-layout folder (tissuekd.demo.segmentation).
DEMO_SEG = f"{DEMO_DIR}/segmentation"


rule demo_segmentation:
    output:
        train=f"{DEMO_SEG}/tissuenet/tissuenet_v1.1_train.npz",
        val=f"{DEMO_SEG}/tissuenet/tissuenet_v1.1_val.npz",
        test=f"{DEMO_SEG}/tissuenet/tissuenet_v1.1_test.npz",
        bbbc038=directory(f"{DEMO_SEG}/bbbc038"),
    log:
        f"{LOGS}/demo/segmentation.log",
    benchmark:
        f"{BENCH}/demo/segmentation/datasets.tsv"
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 1000 * attempt,
        runtime=minutes(10),
    params:
        images=config["demo"]["segmentation_images"],
        px=config["demo"]["segmentation_px"],
        seed=config["demo"]["seed"],
    script:
        "../../scripts/demo_segmentation.py"


# The expression demo: HEST-layout samples (tissuekd.demo.expression); the sheet's rows under
# demo.outdir/expression/hest/ are made here, one job per sample.
DEMO_HEST = f"{DEMO_DIR}/expression/hest"


rule demo_expression_sample:
    output:
        st=f"{DEMO_HEST}/st/{{sample}}.h5ad",
        image=f"{DEMO_HEST}/wsis/{{sample}}.tif",
        metadata=f"{DEMO_HEST}/metadata/{{sample}}.json",
        truth=f"{DEMO_HEST}/truth/{{sample}}.parquet",
    log:
        f"{LOGS}/demo/expression/{{sample}}.log",
    benchmark:
        f"{BENCH}/demo/expression_sample/{{sample}}.tsv"
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 1500 * attempt,
        runtime=minutes(10),
    params:
        dataset=expression_value("dataset"),
        patient=expression_value("patient"),
        seed=config["demo"]["seed"],
    script:
        "../../scripts/demo_expression_sample.py"


rule demo_expression_spaceranger:
    # one sample as Space Ranger leaves it (outs/) with its full-resolution H&E beside
    output:
        image=f"{DEMO_DIR}/expression/spaceranger/{{sample}}/{{sample}}.tif",
        matrix=f"{DEMO_DIR}/expression/spaceranger/{{sample}}/outs/filtered_feature_bc_matrix.h5",
        positions=f"{DEMO_DIR}/expression/spaceranger/{{sample}}/outs/spatial/tissue_positions.csv",
        scalefactors=f"{DEMO_DIR}/expression/spaceranger/{{sample}}/outs/spatial/scalefactors_json.json",
        hires=f"{DEMO_DIR}/expression/spaceranger/{{sample}}/outs/spatial/tissue_hires_image.png",
        lowres=f"{DEMO_DIR}/expression/spaceranger/{{sample}}/outs/spatial/tissue_lowres_image.png",
        truth=f"{DEMO_DIR}/expression/spaceranger/{{sample}}/truth.parquet",
    log:
        f"{LOGS}/demo/expression/{{sample}}.log",
    benchmark:
        f"{BENCH}/demo/expression_spaceranger/{{sample}}.tsv"
    conda:
        "../../envs/scverse.yaml"
    resources:
        mem_mb=lambda wildcards, attempt: 1500 * attempt,
        runtime=minutes(10),
    params:
        dataset=expression_value("dataset"),
        seed=config["demo"]["seed"],
    script:
        "../../scripts/demo_expression_spaceranger.py"
